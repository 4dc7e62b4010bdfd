"""The DPI function's machinery: signature contents and the Aho–Corasick
automaton they compile to (automaton.py). The function type itself is to come."""
