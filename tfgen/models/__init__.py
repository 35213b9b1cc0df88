"""Model pieces: priors, networks (encoders/decoders) and likelihoods; and the linear
latent-variable models' fits: Gaussian mixtures by EM (gmm, seeded by kmeans), probabilistic
PCA (ppca) and their reference fits on data (linear_em)."""
