"""Training: architectures with taps (`models`), losses and the objectives built from them (`objectives`),
recipes by name and from TOML files (`recipes`, `recipe_file`), the loop (`loop.fit`), evaluation (`metrics`)
the numeric settings a run records (`determinism`, `cpu_memory`), and whether a student recipe fits its teacher
(`compat`)."""
