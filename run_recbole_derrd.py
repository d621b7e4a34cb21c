"""Run DE / RRD / DE-RRD (or any RecBole model) like RecBole's own run_recbole.py.

With no flags it distils a BPR-200 teacher into a BPR-20 student on ml-100k under the paper's
protocol (leave-one-out, 499 sampled negatives) and prints the teacher, the student trained
alone and the DE-RRD student side by side.

    python run_recbole_derrd.py                              # the default job
    python run_recbole_derrd.py --model=DE --dataset=ml-100k
    python run_recbole_derrd.py --config_files="my.yaml" --de_weight=0.1
    python run_recbole_derrd.py --model=DERRD --side_by_side=False   # only the DE-RRD run
    python run_recbole_derrd.py --seeds=0,1,2                # mean +- std over seeds
    python run_recbole_derrd.py --resume=saved/DERRD-<time>-last.pth   # after a crash
    python run_recbole_derrd.py --model=BPR                  # any stock RecBole model
    python run_recbole_derrd.py --compare=all --seeds=0,1,2 --baselines=Pop,ItemKNN \
        --out_dir=comparison/ml-100k     # Student, RD, CD, DE, RRD, DE-RRD (+ baselines) table

Flags mirror RecBole's run_recbole.py; any ``--key=value`` is a RecBole config override.
A user error (a bad key or value, a missing, refused or unreadable file) prints one line and
exits with status 2; ``--debug`` shows the full traceback instead.
"""

import argparse
import sys

import recbole_derrd  # noqa: F401  (registers the models; must run at import: DDP workers)
from recbole_derrd.cli_errors import run_reporting_user_errors
from recbole_derrd.config import protocol_file
from recbole_derrd.registration import PLUGIN_MODELS

DEFAULT_PROTOCOL = "loo_uni499"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", "-m", type=str, default="DERRD", help="name of models")
    parser.add_argument("--dataset", "-d", type=str, default="ml-100k", help="name of datasets")
    parser.add_argument("--config_files", type=str, default=None,
                        help="config files, space separated (default: the paper's protocol, "
                             "properties/protocol/%s.yaml)" % DEFAULT_PROTOCOL)
    parser.add_argument("--nproc", type=int, default=1, help="the number of process in this group")
    parser.add_argument("--ip", type=str, default="localhost", help="the ip of master node")
    parser.add_argument("--port", type=str, default="5678", help="the port of master node")
    parser.add_argument("--world_size", type=int, default=-1, help="total number of jobs")
    parser.add_argument("--group_offset", type=int, default=0, help="the global rank offset of this group")
    parser.add_argument("--side_by_side", type=str, default="True",
                        help="for DE/RRD/DERRD: also test the teacher and the student alone")
    parser.add_argument("--resume", type=str, default=None,
                        help="continue the distilled run from its '-last.pth' checkpoint "
                             "(RecBole's Config reads it as the config key `resume`)")
    parser.add_argument("--seeds", type=str, default=None,
                        help="comma-separated seeds: side-by-side runs per seed, then mean +- std")
    parser.add_argument("--export_dir", type=str, default=None,
                        help="export the distilled student as a stock RecBole model here")
    parser.add_argument("--compare", type=str, default=None,
                        help="'all' (Teacher,Student,RD,CD,DE,RRD,DERRD) or a comma-separated list: run the "
                             "resumable comparison and write its tables and plot to --out_dir")
    parser.add_argument("--baselines", type=str, default="",
                        help="with --compare: RecBole models to add at the student's size, e.g. Pop,ItemKNN")
    parser.add_argument("--out_dir", type=str, default="comparison",
                        help="with --compare: folder of the cells, tables and plot")
    parser.add_argument("--continue_capped", type=int, default=None,
                        help="with --compare: continue the finished cells that their epoch cap ended while "
                             "still improving, from their last checkpoint up to this epoch cap")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, show the full traceback instead of one line")
    args, _ = parser.parse_known_args(argv)
    args.argv = list(argv)
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return run_reporting_user_errors(lambda: run(args), debug=args.debug)


def sequential_student(argv):
    """Whether ``--student_model=`` names a sequential recommender (their runs keep RecBole's
    sequential protocol instead of the default leave-one-out + 499 negatives, which orders
    interactions randomly)."""
    from recbole_derrd.backbone_support import is_sequential

    names = [a.split("=", 1)[1] for a in argv if a.startswith("--student_model=")]
    return bool(names) and is_sequential(names[-1])


def check_model_name(name):
    from recbole_derrd.safe_unpickle import model_classes

    known = sorted({cls.__name__ for cls in model_classes()})
    if name not in known:
        import difflib

        close = difflib.get_close_matches(name, known, n=3)
        raise ValueError("--model=%s is not a RecBole or plugin model%s" % (
            name, "; did you mean %s?" % " or ".join(close) if close else ""))


def run(args):
    check_model_name(args.model)
    if args.config_files:
        config_file_list = args.config_files.strip().split(" ")
    elif sequential_student(args.argv):
        config_file_list = []  # RecBole's sequential protocol: leave-one-out by time, full ranking
    else:
        config_file_list = [protocol_file(DEFAULT_PROTOCOL)]
    side_by_side = args.side_by_side.lower() not in ("false", "0", "no")
    distributed = args.nproc > 1 or args.world_size > 0
    seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()] if args.seeds else None
    if args.compare:
        from recbole_derrd.harness.comparison import DEFAULT_METHODS, run_comparison

        methods = (DEFAULT_METHODS if args.compare.lower() in ("all", "true", "1")
                   else [m.strip() for m in args.compare.split(",") if m.strip()])
        baselines = [m.strip() for m in args.baselines.split(",") if m.strip()]
        return run_comparison(args.dataset, config_file_list, methods=methods, baselines=baselines,
                              seeds=seeds or [0], out_dir=args.out_dir, continue_capped=args.continue_capped)
    if args.model in PLUGIN_MODELS and side_by_side and not distributed:
        from recbole_derrd.harness.side_by_side import run_seeds, run_side_by_side

        if seeds:
            return run_seeds(args.model, args.dataset, config_file_list, seeds)
        return run_side_by_side(args.model, args.dataset, config_file_list,
                                export_dir=args.export_dir)
    if not distributed:
        from recbole_derrd.quick_start import run_recbole

        return run_recbole(args.model, args.dataset, config_file_list)
    from recbole.quick_start import run

    return run(args.model, args.dataset, config_file_list=config_file_list, nproc=args.nproc,
               world_size=args.world_size, ip=args.ip, port=args.port,
               group_offset=args.group_offset)


if __name__ == "__main__":
    main()
