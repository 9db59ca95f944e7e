"""Building blocks the models share, one of each: graph layers (GAT, GCN, GATv2: ``layers``), the sparse
kernels under them (``sparse``), graph-VAE losses (``losses``), count likelihoods (NB, ZINB: ``counts``),
deep embedded clustering (``dec``), fusion attention between two cell representations (``fusion``) and
GraphNorm (``norm``)."""
