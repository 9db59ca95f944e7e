"""The short explanations behind each page, written for a biology student, with the papers they come from.

Shown collapsed at the top of every page (``ui.teach``). Plain markdown; keep each one short.
"""

from __future__ import annotations

CELLVGAE = "Buterez et al., *CellVGAE: an unsupervised scRNA-seq analysis workflow with graph attention networks*, Bioinformatics 38(5):1277, 2022"
GAT = "Veličković et al., *Graph Attention Networks*, ICLR 2018"
VGAE = "Kipf & Welling, *Variational Graph Auto-Encoders*, NeurIPS Bayesian Deep Learning workshop, 2016"
SCANPY = "Wolf, Angerer & Theis, *SCANPY: large-scale single-cell gene expression data analysis*, Genome Biology 19:15, 2018"
BEST_PRACTICES = "Luecken & Theis, *Current best practices in single-cell RNA-seq analysis: a tutorial*, Mol Syst Biol 15:e8746, 2019"
UMAP = (
    "McInnes, Healy & Melville, *UMAP: Uniform Manifold Approximation and Projection*, arXiv:1802.03426, 2018"
)
HDBSCAN = "Campello, Moulavi & Sander, *Density-based clustering based on hierarchical density estimates*, PAKDD 2013"
LEIDEN = "Traag, Waltman & van Eck, *From Louvain to Leiden: guaranteeing well-connected communities*, Sci Rep 9:5233, 2019"
SCVGAE = "Inoue, *scVGAE: a ZINB-based variational graph autoencoder for scRNA-seq imputation*, 2024"
ATTENTIONAE = "Li et al., *AttentionAE-sc: attention-fused autoencoders for single-cell clustering*, PLoS Comput Biol, 2023 (doi 10.1371/journal.pcbi.1011641)"
DCA = (
    "Eraslan et al., *Single-cell RNA-seq denoising using a deep count autoencoder*, Nat Commun 10:390, 2019"
)

TOPICS: dict[str, dict] = {
    "data": {
        "title": "What this page does: from a count matrix to model inputs",
        "text": (
            "A single-cell RNA-seq experiment gives a table of **cells x genes**: how many RNA molecules "
            "of each gene were captured in each cell (raw *counts*, integers). Before any model sees it:\n\n"
            "* **Quality control.** A cell with very few counts or genes is often an empty droplet or a "
            "broken cell; a cell with a high share of **mitochondrial** RNA (genes named `MT-...`) is "
            "often dying, because its cytoplasmic RNA leaked out while the mitochondria kept theirs.\n"
            "* **Normalisation.** Cells are sequenced to different depths, so each cell's counts are "
            "scaled to the same total (10,000) and then log-transformed (`log1p`), which tames the few "
            "very high values.\n"
            "* **Highly variable genes (HVGs).** Most genes barely change between cell types. Keeping the "
            "genes whose variance is highest for their mean expression keeps the biology and drops noise. "
            "CellVGAE uses one HVG set as the model's input and a second set (KHVG) to build the cell graph.\n"
            "* **Labels.** If the file has known cell types (an `obs` column), they colour the plots and "
            "score the clusters (ARI, NMI); the unsupervised models never train on them."
        ),
        "papers": [BEST_PRACTICES, SCANPY],
    },
    "model": {
        "title": "The idea: cells as a graph, and a network that reads it",
        "text": (
            "**The cell graph.** Each cell is a node; an edge joins a cell to the cells that look most like "
            "it. A **kNN graph** links every cell to its *k* nearest cells by distance on the selected "
            "genes (euclidean, cosine or manhattan). A **Pearson kNN graph** uses the correlation of the "
            "two expression profiles instead: two cells are close when their genes go up and down "
            "together, whatever their overall level. Small *k* keeps only very similar neighbours; large "
            "*k* joins cell types that touch. The statistics below (degree, isolated cells, connected "
            "pieces) tell you whether the graph holds together before you train.\n\n"
            "**The network.** A graph neural network updates each cell's numbers from its neighbours'. "
            "CellVGAE's encoder is a **graph attention network (GAT)**: every cell learns how much to "
            "listen to each neighbour. It is a **variational graph autoencoder**: it squeezes each cell "
            "into a few latent numbers (the *embedding*) from which the graph's edges can be predicted "
            "again, while a KL term keeps the latent space smooth. Cells of one type end up close "
            "together in that space.\n\n"
            "**Presets.** *quick* trains a small network in about a minute; *paper* uses the settings "
            "published with the method."
        ),
        "papers": [CELLVGAE, GAT, VGAE],
    },
    "training": {
        "title": "What you are watching while it trains",
        "text": (
            "Training repeats one step per **epoch**: the network embeds all cells, tries to predict which "
            "cells are joined in the graph, measures its errors (the **loss**) and nudges its weights to "
            "make fewer. Each term of the loss is drawn on its own, because they have different scales:\n\n"
            "* **reconstruction**: how badly the embedding predicts the graph's edges (true edges should get "
            "a high score, random pairs of cells a low one);\n"
            "* **kl** (or **mmd**): how far the latent space is from a standard normal distribution; it "
            "keeps the embedding smooth so that nearby points mean similar cells.\n\n"
            "A share of the edges is hidden from the network. Every few epochs it is asked to find them "
            "among random pairs: the **AUC** and **average precision** on those held-out edges show "
            "whether it learnt the structure of the data rather than memorised the graph (0.5 is chance, "
            "1 is perfect); once training ends, the final embedding is read over every edge. The run "
            "keeps going if you close the tab; **Stop** ends it after the current "
            "epoch and keeps the best checkpoint."
        ),
        "papers": [CELLVGAE, VGAE],
    },
    "embedding": {
        "title": "Reading the latent space: UMAP, clusters and scores",
        "text": (
            "The model describes every cell with a few dozen latent numbers. To look at them, **UMAP** "
            "draws the cells in 2-D so that cells that are neighbours in the latent space stay neighbours "
            "on the page (distances between far-apart groups are not meaningful).\n\n"
            "**Clusters** are groups of cells found without labels. CellVGAE runs **HDBSCAN** on the UMAP: "
            "it finds dense regions and calls cells between them *noise*; *min cluster size* sets the "
            "smallest group it will report. **Leiden** instead splits the cells' neighbour graph into "
            "communities; a higher *resolution* gives more, smaller clusters.\n\n"
            "With known cell types, **ARI** (adjusted Rand index) and **NMI** (normalised mutual "
            "information) say how well clusters match them (1 = identical, 0 = chance). The **silhouette** "
            "(-1 to 1) needs no labels: it is high when each cell is closer to its own cluster than to the "
            "next one. Select cells with the box or lasso tool to see what they are."
        ),
        "papers": [CELLVGAE, UMAP, HDBSCAN, LEIDEN],
    },
    "attention": {
        "title": "What an attention coefficient means",
        "text": (
            "In a graph attention layer each cell *i* builds its new description as a **weighted average "
            "of its neighbours' descriptions**. The weight it gives neighbour *j* is the **attention "
            "coefficient** α_ij: a number between 0 and 1, learnt from the two cells' expression, and the "
            "weights over all of *i*'s neighbours (itself included) add up to 1. A high α_ij means: to "
            "describe cell *i*, the model relied mostly on cell *j*.\n\n"
            "The network has several **heads**: independent sets of attention weights that can look for "
            "different things. *Mean over heads* shows what they agree on; *std over heads* shows where "
            "they disagree. The graph below draws the strongest edges; an arrow goes from the cell that "
            "was listened to (source) to the cell that listened (target). On the UMAP, a cell's "
            "attention score adds up the attention on every edge that touches it, so cells that many "
            "neighbours rely on stand out. In models that fuse two views of the data (AttentionAE-sc) the "
            "attention runs between all cells; only the strongest pairs are kept and drawn."
        ),
        "papers": [GAT, CELLVGAE, ATTENTIONAE],
    },
    "markers": {
        "title": "How P_mu links genes to latent dimensions",
        "text": (
            "The encoder turns a cell's gene values into its latent numbers through a chain of weight "
            "matrices. Multiplying those matrices together (and ignoring the non-linear parts) gives "
            "**P_mu**, one row per gene and one column per latent dimension: a large positive P_mu[g, d] "
            "means *more of gene g pushes the cell up along dimension d*. P_sigma does the same for the "
            "layer that sets the uncertainty of each dimension.\n\n"
            "To name **marker genes of a cluster**, CellVGAE first finds the latent dimensions that mostly "
            "the cluster's cells take extreme values on, then takes the genes with the largest P_mu on "
            "those dimensions; a gene that comes up on several of them (*appearances*) is a stronger "
            "marker. This is a linear approximation of the network, so compare it with a classical test: "
            "scanpy's `rank_genes_groups` ranks genes by how differently they are expressed in the "
            "cluster than in all other cells. Genes found by both are the most trustworthy."
        ),
        "papers": [CELLVGAE, SCANPY],
    },
    "expression": {
        "title": "What learnt expression shows",
        "text": (
            "For a gene *g*, multiplying each cell's latent numbers by the gene's row of P_mu gives a "
            "score, the **learnt expression**: how strongly the cell's position in the latent space "
            "points in the direction that gene pushes. It is not a measured value; it shows what the model "
            "learnt about the gene. Where it is high in the same cells where the gene is really expressed "
            "(left plot), the model has captured that gene's pattern, often more smoothly than the noisy, "
            "zero-rich measurements. A marker such as NKG7 (NK cells) or LYZ (monocytes) should light up "
            "its own cell type in both plots."
        ),
        "papers": [CELLVGAE],
    },
    "imputation": {
        "title": "Why and how expression is imputed",
        "text": (
            "Single-cell data are full of zeros. Some are real (the gene is off), many are **dropouts**: "
            "the gene was expressed but none of its few RNA molecules was captured. Imputation models "
            "estimate the value a gene would have had. scVGAE and AttentionAE-sc model counts with a "
            "**zero-inflated negative binomial (ZINB)** distribution: a negative binomial for the count "
            "itself plus a separate chance of an extra zero; their decoder outputs the expected value for "
            "every cell and gene, borrowing strength from similar cells through the graph.\n\n"
            "Compare the observed and imputed values on the same UMAP: a good imputation fills in a gene "
            "inside the cell type that expresses it without spreading it to the others. The gene-gene plot "
            "shows whether two genes that work together become correlated after imputation; a correlation "
            "that appears everywhere can also be an artefact of over-smoothing."
        ),
        "papers": [SCVGAE, ATTENTIONAE, DCA],
    },
    "runs": {
        "title": "Runs: every training is kept",
        "text": (
            "Each training is a **run**: a folder on disk with its full settings (so it can be repeated), "
            "its training log, the trained weights and a `result.h5ad` file that scanpy, cellxgene or any "
            "AnnData reader opens. Open a run to explore it, compare two runs side by side on the "
            "Embedding page, and download results for your own analysis."
        ),
        "papers": [SCANPY],
    },
}
