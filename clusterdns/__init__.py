"""clusterdns: a cluster DNS server for Kubernetes, a drop-in for CoreDNS in the kube-dns Deployment."""

__version__ = "0.1.0"
