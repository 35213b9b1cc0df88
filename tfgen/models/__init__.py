"""Model pieces: priors, networks (encoders/decoders) and likelihoods."""
