"""The DPI function's machinery: signature contents and the Aho–Corasick DFA
they compile to (automaton.py), and the reference verdict the tests hold the
kernel program to (reference.py). The function type is vnfchain/functions/dpi.py."""
