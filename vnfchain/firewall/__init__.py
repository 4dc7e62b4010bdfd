"""The firewall's machinery: the rule model (rules.py), the bit-vector
classifier it compiles to (lbvs.py), and its nftables translation (nft.py),
which the tests use as an oracle. The function type itself is
vnfchain/functions/firewall.py."""
