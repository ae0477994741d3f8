"""Subset selection core (numpy/torch only, no Ray, no pyarrow).

``registry.SELECTORS[name](embeddings, latent, fraction, seed, cfg, labels) -> Ranking``;
:mod:`.latent` approximates latent classes; :mod:`.ranking` holds the nested,
per-class-proportional order every selector returns.
"""
