"""The experiment harness, built on the plugin's public functions only.

* :mod:`~recbole_derrd.harness.side_by_side` — teacher, student alone and a distilled student
  on one split (the main job), and the same over several seeds;
* :mod:`~recbole_derrd.harness.comparison` — the resumable multi-method, multi-seed comparison;
* :mod:`~recbole_derrd.harness.synthetic` — a seeded power-law dataset generator;
* :mod:`~recbole_derrd.harness.tables` — the markdown tables they print.
"""
