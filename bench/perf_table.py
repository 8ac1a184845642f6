"""Regenerate the README's performance table from the benchmarks (each run once, its --markdown rows).

    python bench/perf_table.py [--ssd-pytorch PATH] [--write]     (--write: replace the table in README.md)

The table sits between the README's `<!-- perf:begin -->` and `<!-- perf:end -->` lines.
"""
import argparse
import pathlib
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
README = HERE.parent / "README.md"
BEGIN, END = "<!-- perf:begin -->", "<!-- perf:end -->"


def rows(script, *args):
    out = subprocess.run([sys.executable, str(HERE / script), "--markdown", *args], capture_output=True, text=True,
                         check=True).stdout
    print(f"$ {script} {' '.join(args)}\n{out}", file=sys.stderr)   # the whole report, for the record
    return [line for line in out.splitlines() if line.startswith("| ") and "---" not in line
            and not line.startswith("| deploy forward b1 incl. detection | variant")]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ssd-pytorch", default=None)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args(argv)
    peer = ["--ssd-pytorch", args.ssd_pytorch] if args.ssd_pytorch else []
    table = ["| work | OpenCV dnn | ssd.pytorch | protonet | protonet / best peer |", "|---|---|---|---|---|"]
    table += rows("bench_data_path.py", *peer)
    table += rows("bench_train_step.py", *peer)
    for line in rows("bench_deploy.py"):
        model, variant, ms, ratio = [c.strip() for c in line.strip("|").split("|")]
        if variant == "opencv":
            opencv = ms
        else:
            table.append(f"| deploy forward b1 incl. detection, {model}, {variant.replace('protonet ', '')} (ms) "
                         f"| {opencv} | | {ms} | {ratio} |")
    text = "\n".join(table) + f"\n\n(measured {time.strftime('%Y-%m-%d')} by `bench/perf_table.py`)\n"
    print(text)
    if args.write:
        readme = README.read_text()
        start, end = readme.index(BEGIN) + len(BEGIN), readme.index(END)
        README.write_text(readme[:start] + "\n" + text + readme[end:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
