"""MkDocs hook: the parts of the site that are generated, never written by hand.

A page asks for generated content with a marker line of its own, replaced at build time:

    <!-- generated: benchmark-run results -->        a benchmark run, as benchmarks.report wrote it
    <!-- generated: compressor-table -->             scripts/compressor_table.py's table (from the code)
    <!-- generated: calibration-check results/calibration_check -->   benchmarks.calibrate_check's output
    <!-- generated: advisor --model resnet18 ... -->  what `python -m horovod_powersgd.advisor ...` prints

A benchmark run is a directory that ``benchmarks.run`` / ``benchmarks.report`` wrote: the report's
tables (``benchmark.md``) and plots (``*.png``), rendered from the run's raw results
(``benchmark.json``; ``python -m benchmarks.report DIR/benchmark.json`` renders them again). They
are included as the report wrote them, its sections one level down and each plot after the section
it belongs to. The changelog page is CHANGELOG.md.

Everything here reads local files and the package (NumPy only); nothing is fetched, and neither
torch, TensorFlow nor Horovod is imported.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import shlex
import sys
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]

MARKER = re.compile(r"^<!-- generated: (\S+)(?: (.*?))? -->$", re.M)
ASSETS = "assets/generated"
#: each plot goes after the last section of the report whose title starts with this
PLOT_AFTER = {"step_breakdown.png": "Step time", "bytes_vs_workers.png": "Scaling",
              "time_to_accuracy.png": "Time to accuracy"}
PLOT_TITLES = {"step_breakdown.png": "step time breakdown", "bytes_vs_workers.png": "bytes and step "
               "time against workers", "time_to_accuracy.png": "test accuracy against training time"}

_runs: dict = {}  # run directory (relative to ROOT) -> (markdown, {png name: bytes})


def _run(directory: str):
    """The report of one benchmark run, as ``benchmarks.report`` wrote it: (markdown, plots)."""
    if directory in _runs:
        return _runs[directory]
    path = ROOT / directory
    if not (path / "benchmark.md").is_file():
        raise PluginError(f"generated benchmark page: no {directory}/benchmark.md (benchmarks.run "
                          f"--out {directory} writes it; python -m benchmarks.report "
                          f"{directory}/benchmark.json re-renders it from the run's raw results)")
    text = (path / "benchmark.md").read_text()
    plots = {p.name: p.read_bytes() for p in sorted(path.glob("*.png"))}
    _runs[directory] = text, plots
    return _runs[directory]


def _asset(directory: str, name: str) -> str:
    return f"{ASSETS}/{directory.strip('/').replace('/', '_')}/{name}"


def _benchmark_run(directory: str, page_dir: str) -> str:
    """The report, its title dropped and its sections one level down, each plot after its section."""
    text, plots = _run(directory)
    lines = text.splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    lines = [("#" + line) if line.startswith("##") else line for line in lines]
    sections = [i for i, line in enumerate(lines) if line.startswith("### ")]
    insert = {}
    for name in plots:
        after = [i for i in sections if lines[i][4:].startswith(PLOT_AFTER.get(name, "\0"))]
        end = (next((j for j in sections if j > after[-1]), len(lines)) if after else len(lines))
        rel = _relative(_asset(directory, name), page_dir)
        insert.setdefault(end, []).append(f"![{PLOT_TITLES.get(name, name)}]({rel})")
    out = []
    for i, line in enumerate(lines + [""]):
        for image in insert.get(i, []):
            out += ["", image, ""]
        out.append(line)
    return "\n".join(out).strip("\n")


def _relative(target: str, page_dir: str) -> str:
    depth = len([p for p in page_dir.split("/") if p])
    return "../" * depth + target


def _compressor_table() -> str:
    spec = importlib.util.spec_from_file_location("compressor_table", ROOT / "scripts/compressor_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.table().strip("\n")


def _calibration_check(directory: str) -> str:
    files = sorted((ROOT / directory).glob("*.md"))
    if not files:
        raise PluginError(f"generated calibration check: no *.md in {directory}")
    parts = []
    for f in files:
        body = f.read_text().strip("\n")
        parts += [f"#### `{f.relative_to(ROOT)}`", "", body, ""]
    return "\n".join(parts)


def _advisor(args: str) -> str:
    from horovod_powersgd import advisor

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = advisor.main(shlex.split(args))
    if code:
        raise PluginError(f"generated advisor output: `advisor {args}` exited {code}")
    return (f"```console\n$ python -m horovod_powersgd.advisor {args}\n"
            f"{buffer.getvalue().rstrip()}\n```")


def on_config(config):
    # the repository root, for scripts/ and this checkout's package (MkDocs restores
    # sys.path after loading a hook, so it is added here)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return config


def on_files(files, config):
    for source in sorted(Path(config["docs_dir"]).rglob("*.md")):
        for name, arg in MARKER.findall(source.read_text()):
            if name == "benchmark-run":
                _, plots = _run(arg)
                for png, content in plots.items():
                    files.append(File.generated(config, _asset(arg, png), content=content))
    files.append(File.generated(config, "changelog.md",
                                content=(ROOT / "CHANGELOG.md").read_text()))
    return files


def on_page_markdown(markdown, page, config, files):
    parent = Path(page.file.src_uri).parent
    page_dir = "" if str(parent) == "." else parent.as_posix()

    def replace(match):
        name, arg = match.group(1), (match.group(2) or "").strip()
        if name == "benchmark-run":
            return _benchmark_run(arg, page_dir)
        if name == "compressor-table":
            return _compressor_table()
        if name == "calibration-check":
            return _calibration_check(arg)
        if name == "advisor":
            return _advisor(arg)
        raise PluginError(f"{page.file.src_uri}: unknown generated block {name!r}")

    return MARKER.sub(replace, markdown)
