"""Ray Tune over the plugin's models: RecBole's ``run_hyper.py --tool=Ray`` flow, on CPUs.

Checked by hand, not in CI (ray starts a local cluster; minutes even on ml-100k).  What was
found (recbole 1.2.1, ray 2.6.3, pyarrow 17.0.0, 2-core CPU, 2026-11-28): with a fixed file
for DERRD on ml-100k (1 epoch, uni99), ``--samples=2`` ran both trials through RecBole's stock
``objective_function`` in ray worker processes (the installed ``recbole_derrd_hook.pth``
registers the plugin there), both TERMINATED, and the script printed the best one.  Two
things stop RecBole's own script on a CPU-only machine, neither caused by the plugin:
``run_hyper.py`` asks for ``resources_per_trial={"gpu": 1}`` (trials wait for a GPU forever),
and ray 2.6.3's ``tune.run`` needs ``pyarrow`` to build its result object after the trials
(pyarrow 18+ needs numpy 2, which RecBole 1.2.1 cannot use: take ``pyarrow<18``).  This script
asks for CPUs instead.

    pip install recbole-derrd "pyarrow<18"   # the plugin must be installed, not only importable
    python docs/ray_tuning.py --config_files=my_fixed.yaml --samples=8
"""

import argparse
import os

import ray
from ray import tune
from recbole.quick_start import objective_function


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config_files", required=True, help="fixed RecBole config files (model: DERRD, ...)")
    parser.add_argument("--samples", type=int, default=4, help="number of trials")
    parser.add_argument("--cpus_per_trial", type=int, default=1)
    args = parser.parse_args()
    files = [os.path.abspath(f) for f in args.config_files.split()]
    ray.init(include_dashboard=False)
    space = {"de_weight": tune.loguniform(1e-4, 1e-1), "rrd_weight": tune.loguniform(1e-4, 1e-1)}
    analysis = tune.run(tune.with_parameters(objective_function, config_file_list=files), config=space,
                        num_samples=args.samples, resources_per_trial={"cpu": args.cpus_per_trial},
                        local_dir=os.path.abspath("ray_log"))
    # selection on the validation metric, never on test (RecBole reports both)
    best = analysis.get_best_trial("best_valid_score", "max", "last")
    print("best params:", best.config)
    print("best valid score:", best.last_result["best_valid_score"])


if __name__ == "__main__":
    main()
