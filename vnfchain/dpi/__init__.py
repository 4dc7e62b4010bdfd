"""The DPI function's machinery: signature contents and the Aho–Corasick DFA
they compile to (automaton.py), Suricata-style rules read as signatures
(rules.py), the reference verdict the tests hold the kernel program to
(reference.py), and a large synthetic signature set for tests and benchmarks
(synthetic.py). The function type, its map layouts and how app rules
become map contents are vnfchain/functions/dpi/."""
