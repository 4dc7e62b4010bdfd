"""vnfchain: NFV service chains run inside the Linux kernel at the XDP hook."""
__version__ = "0.1.0"
