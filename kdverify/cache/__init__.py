"""Trained models by what made them: a spec resolves a recipe name to seed, teacher, key and path (`spec`); the
cache trains what is missing, once across processes (`store`); checkpoints are sealed and checked (`checkpoint`);
pinned teachers ship with the package (`pinned`, `manifest`); executors train locally or on a Ray cluster
(`executors`); what comes back is a `records.Trained`."""
