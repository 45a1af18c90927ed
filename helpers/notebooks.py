"""Run the workflow's notebooks headless, in order, with papermill.

``python -m helpers.notebooks --profile demo`` runs notebooks 01→06 on the
generated demo data and keeps each executed notebook (with its outputs) in
``<workspace>/runs/``. The same parameters a user sets in a notebook's
``parameters`` cell can be passed with ``-p name value``; each notebook gets only
the parameters its ``parameters`` cell declares, and a name that no notebook
declares is an error.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

from helpers.atomic import atomic_path, atomic_write_text
from helpers.parameters import check_parameters as check_kinds
from helpers.progress import TEXT_ENV
from helpers.workspace import get_workspace

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"

# Parameters the headless demo adds to the notebooks' own defaults: 150 steps per stage (the
# demo profile's own 10 are for tests; 150 take about a minute on 2 cores and the model then
# finds the synthetic nuclei), a route table so that notebook 04 compares a routed ensemble
# too, and leave to replace the demo's own answer.
PROFILE_PARAMETERS = {
    "demo": {"steps": 150, "route_by_organ": {"breast": "all"}, "overwrite": True,
             # notebook 06 tiles the 256 px demo images (nuclei <= 28 px) in 4 overlapping tiles
             "tile": 160, "overlap": 48},
}


def workflow_notebooks(upto: str | None = None) -> list[Path]:
    """The numbered notebooks in order, optionally only up to the one whose name starts with ``upto``."""
    books = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    if upto is not None:
        cut = [i for i, b in enumerate(books) if upto.strip() and b.name.startswith(upto)]
        if not cut:
            raise ValueError(f"no notebook in {NOTEBOOK_DIR} starts with {upto!r}: "
                             f"choose one of {[b.name for b in books]}")
        books = books[: cut[0] + 1]
    return books


def declared_parameters(notebook: str | os.PathLike) -> list[str]:
    """The names the notebook's ``parameters`` cell declares (papermill's own parsing)."""
    import papermill as pm

    return list(pm.inspect_notebook(str(notebook)))


def check_parameters(parameters: dict, notebooks: list[Path]) -> dict[Path, list[str]]:
    """Each notebook's declared names; ``ValueError`` for a parameter that none of them declares."""
    declared = {nb: declared_parameters(nb) for nb in notebooks}
    known = {name for names in declared.values() for name in names}
    unknown = [name for name in parameters if name not in known]
    if unknown:
        listing = "; ".join(f"{nb.name}: {', '.join(names)}" for nb, names in declared.items())
        raise ValueError(f"no notebook declares the parameter(s) {', '.join(unknown)} "
                         f"(a typo?). The parameters cells declare: {listing}")
    return declared


# What the kernel's process itself prints is kept out of the notebook and off the console, in
# runs/<name>.kernel.log: TensorFlow's C++ log lines (e.g. grappler's "W0000 ... Error in
# PredictCost() for the op: CropAndResize", which TF_CPP_MIN_LOG_LEVEL does not reach) and the
# kernel's own start-up warnings ("running over TCP without encryption" on a loopback kernel).
# Python's stdout/stderr (results, progress bars, warnings, tracebacks) stay in the notebook.
KERNEL_ARGUMENTS = ["--IPKernelApp.capture_fd_output=False", "--IPKernelApp.log_level=ERROR"]


def kernel_env() -> dict[str, str]:
    """The environment a headless kernel starts with: this process's, and (unless set here
    already) its progress bars as text lines saved in the notebook, a few per bar rather than
    hundreds. ``helpers.progress`` reads ``NUCLEI_TEXT_PROGRESS`` whenever the kernel makes a bar;
    this process's own bars and environment are left as they are."""
    env = dict(os.environ)
    env.setdefault(TEXT_ENV, "1")
    env.setdefault("TQDM_MININTERVAL", "5")
    return env


def _kernel_manager(log):
    """A kernel manager class whose kernels write their process's stderr to ``log`` and start
    with :func:`kernel_env`."""
    from jupyter_client import AsyncKernelManager

    class LoggedKernelManager(AsyncKernelManager):
        async def _async_start_kernel(self, **kw):
            kw.setdefault("stderr", log)
            kw.setdefault("stdout", log)
            kw.setdefault("env", kernel_env())
            return await super()._async_start_kernel(**kw)

        start_kernel = _async_start_kernel

    return LoggedKernelManager


def run_notebook(notebook: str | os.PathLike, parameters: dict | None = None,
                 workspace_root: str | os.PathLike | None = None, log_output: bool = False) -> Path:
    """Execute one notebook headless; return the path of the executed copy in ``runs/``.

    ``parameters`` must be names the notebook's ``parameters`` cell declares (``ValueError``
    otherwise); ``workspace_root`` is passed as the notebook's own parameter.

    The executed copy is written atomically, so a failed or interrupted run never leaves a
    notebook that looks complete. On failure papermill raises ``PapermillExecutionError``
    naming the failing cell, and the partial copy is kept as ``<name>.failed.ipynb``.
    """
    # debugpy (imported with ipykernel's kernel spec) warns about frozen modules on Python 3.13
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    import papermill as pm

    notebook = Path(notebook)
    ws = get_workspace(workspace_root)
    params = dict(parameters or {})
    declared = declared_parameters(notebook)
    unknown = [name for name in params if name not in declared]
    if unknown:
        raise ValueError(f"{notebook.name} does not declare the parameter(s) {', '.join(unknown)}; "
                         f"its parameters cell declares: {', '.join(declared)}")
    if "workspace_root" in declared:
        params.setdefault("workspace_root", str(ws.root))
    out = ws.runs / notebook.name
    with atomic_path(out) as tmp, open(ws.runs / f"{notebook.stem}.kernel.log", "w") as log:
        work = tmp.with_name(tmp.name + ".ipynb")  # papermill wants the .ipynb suffix
        try:
            pm.execute_notebook(str(notebook), str(work), parameters=params, kernel_name="python3",
                                cwd=str(notebook.parent), progress_bar=False, log_output=log_output,
                                kernel_manager_class=_kernel_manager(log),
                                extra_arguments=KERNEL_ARGUMENTS,
                                coalesce_streams=True)  # one stream per cell, each bar at its end
        except BaseException:
            if work.exists():
                os.replace(work, ws.runs / f"{notebook.stem}.failed.ipynb")
            raise
        os.replace(work, tmp)
    return out


def run_workflow(profile: str = "demo", upto: str | None = None, parameters: dict | None = None,
                 workspace_root: str | os.PathLike | None = None, log_output: bool = False) -> list[Path]:
    """Run notebooks 01→06 (or up to ``upto``) in order with one profile.

    Each notebook gets the parameters its ``parameters`` cell declares. ``parameters`` (the
    ``-p`` ones) are checked first against all the workflow's notebooks: a name that none of
    them declares raises ``ValueError`` before anything runs.
    """
    declared = check_parameters(parameters or {}, workflow_notebooks())
    params = {"profile": profile, **PROFILE_PARAMETERS.get(profile, {}), **(parameters or {})}
    done = []
    for nb in workflow_notebooks(upto):
        t0 = time.time()
        print(f"▶ {nb.name} (profile={profile})", flush=True)
        own = {k: v for k, v in params.items() if k in declared[nb]}
        done.append(run_notebook(nb, own, workspace_root, log_output))
        print(f"✔ {nb.name} in {time.time() - t0:.0f} s → {done[-1]}", flush=True)
    return done


def _parse_value(text: str):
    import json
    try:
        return json.loads(text)
    except ValueError:
        return text


# the whole REPO_URL line, whatever it holds now (a broken one too), keeping its form comment
_REPO_URL_LINE = re.compile(r"^REPO_URL = .*?(?P<form>\s+#@param.*)?$", re.M)
# a git URL: https:// or ssh:// host, or git@host:, then a path of URL characters (no quote,
# space, semicolon or bracket: it becomes a Python string in the notebooks' code)
_GIT_URL = re.compile(r"^(?:(?:https|ssh)://[A-Za-z0-9.-]+(?::\d+)?/|git@[A-Za-z0-9.-]+:)[A-Za-z0-9._~/%+@-]+$")
_COLAB_BADGE = re.compile(r"https://colab\.research\.google\.com/github/[^/\s)]+/[^/\s)]+/blob/")
_GITHUB_URL = re.compile(r"^https://github\.com/([\w.-]+)/([\w.-]+?)(?:\.git)?/?$")


def set_repo_url(url: str, repo: str | os.PathLike = REPO) -> list[Path]:
    """Point the notebooks' ``REPO_URL`` (and, for a GitHub URL, the README's "Open in
    Colab" links) at ``url``, the git URL of your copy; return the files changed.

    Run once in your fork and commit: ``python -m helpers.notebooks --set-repo-url URL``.
    """
    import json

    if not _GIT_URL.match(url) or "OWNER" in url:
        raise ValueError(f"{url!r} is not a git URL such as https://github.com/<you>/nuclei-maskrcnn "
                         "(letters, digits and . _ ~ / % + @ - only)")
    repo = Path(repo)
    changed = []
    line = f"REPO_URL = {json.dumps(url)}"  # a Python string literal: _GIT_URL admits no quote or backslash
    for nb_path in sorted((repo / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        nb = json.loads(nb_path.read_text())
        cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
        src = "".join(cell["source"])
        if not _REPO_URL_LINE.search(src):
            raise ValueError(f"{nb_path}: no REPO_URL line in its parameters cell")
        new = _REPO_URL_LINE.sub(lambda m: line + (m["form"] or ""), src, count=1)
        if new != src:
            cell["source"] = new.splitlines(keepends=True)
            atomic_write_text(nb_path, json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
            changed.append(nb_path)
    github = _GITHUB_URL.match(url)
    readme = repo / "README.md"
    if github and readme.is_file():
        text = readme.read_text()
        new = _COLAB_BADGE.sub(f"https://colab.research.google.com/github/{github[1]}/{github[2]}/blob/",
                               text)
        if new != text:
            atomic_write_text(readme, new)
            changed.append(readme)
    return changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="demo", choices=["demo", "cpu", "colab"])
    ap.add_argument("--upto", help="stop after the notebook whose name starts with this, e.g. 03")
    ap.add_argument("--workspace", help="workspace folder (default $NUCLEI_WORKSPACE or ./workspace)")
    ap.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="a notebook parameter (JSON values are parsed)")
    ap.add_argument("--log-output", action="store_true", help="stream the notebooks' output")
    ap.add_argument("--set-repo-url", metavar="URL",
                    help="point the notebooks' REPO_URL and the README's Colab links at your copy, "
                         "then exit (commit the result)")
    args = ap.parse_args(argv)
    if args.set_repo_url:
        try:
            changed = set_repo_url(args.set_repo_url)
        except ValueError as e:
            ap.error(str(e))
        print("\n".join(f"updated {p}" for p in changed) or "already set; nothing changed")
        return 0
    params = {k: _parse_value(v) for k, v in args.p}
    if "profile" in params:
        ap.error("set the profile with --profile (demo, cpu or colab), not -p profile")
    try:
        check_parameters(params, workflow_notebooks())
        check_kinds(params)
        workflow_notebooks(args.upto)
        get_workspace(args.workspace)
    except ValueError as e:
        ap.error(str(e))
    t0 = time.time()
    run_workflow(args.profile, args.upto, params, args.workspace, args.log_output)
    print(f"Workflow finished in {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
