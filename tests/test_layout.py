"""The shape of the library (README.md, "Layout"): the layers of mingpt/ and which may import
which, no import circles, torchft's internals in one module, a layout section that names every
module, and the bounds on the size of rooms (modules, functions). Read from the source with ast:
nothing is imported or run."""
import ast
import re
from pathlib import Path

from helpers import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "mingpt"
# the layers, in the order of the data flow; a module of a layer may import its own layer and
# those it names (utils: everyone)
LAYERS = {
    "utils": set(),
    "nn": set(),  # the model's parts: torch only
    "bpe": set(),
    "data": {"bpe"},
    "formats": {"training", "data", "bpe"},  # run folders and checkpoints; a pretrained model's tokenizer
    "model": {"nn", "formats"},
    "distributed": set(),
    "eval": {"distributed", "formats", "model"},  # (the lm-eval bridge loads a model and its tokenizer)
    "training": {"distributed", "nn"},  # (nn: the CPU kernels the Trainer applies)
    "trainer": {"training", "distributed", "eval", "nn"},
    "jobs": {"*"},  # the application: anything but another job (pipeline and recipes are theirs)
    "cli": {"jobs"},  # (it runs the jobs by name, and reads the recipes)
    "lm_eval_bridge": {"eval"},  # a face: the name outside code registers the bridge by
    "__main__": {"cli"},
}
TOP_LEVEL = {"model", "trainer", "bpe", "utils", "cli", "lm_eval_bridge"}  # mingpt/*.py besides __init__, __main__


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The mingpt modules a file imports, anywhere in it (also inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "mingpt"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mingpt":
            for alias in node.names:  # `from mingpt.nn import kernels` imports mingpt.nn.kernels
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return found


def graph() -> dict[str, set[str]]:
    known = set(modules())
    return {name: imports_of(path, known) for name, path in modules().items()}


def layer_of(module: str) -> str:
    parts = module.split(".")
    return "mingpt" if len(parts) == 1 else parts[1]


def allowed(importer: str, imported: str) -> bool:
    """Whether module `importer` may import `imported`, by their layers."""
    source, target = layer_of(importer), layer_of(imported)
    if target == "utils" or source == target and source != "jobs":
        return True
    if source == "mingpt":  # the package's face: GPT, Trainer, CfgNode
        return imported in ("mingpt.model", "mingpt.trainer", "mingpt.utils")
    if source == "jobs":  # any library module; of jobs/, only what they share
        return target != "jobs" or imported in ("mingpt.jobs", "mingpt.jobs.pipeline", "mingpt.jobs.recipes")
    if source == "cli":
        return imported in ("mingpt.jobs", "mingpt.jobs.recipes")
    return target in LAYERS[source]


def test_every_module_belongs_to_a_layer_and_imports_only_what_it_may():
    arrows = graph()
    unplaced = sorted({layer_of(m) for m in arrows} - set(LAYERS) - {"mingpt"})
    assert not unplaced, f"layers without an import rule in tests/test_layout.py: {unplaced}"
    against = [f"{m} -> {dep}" for m, deps in arrows.items() for dep in sorted(deps - {m}) if not allowed(m, dep)]
    assert not against, f"imports against the rules: {against}"


def test_no_import_circles():
    arrows = graph()
    circles = []

    def visit(node: str, path: list[str]) -> None:
        for dep in arrows.get(node, ()):
            if dep in path:
                circles.append(" -> ".join(path[path.index(dep):] + [dep]))
            elif dep not in done:
                visit(dep, path + [dep])
        done.add(node)

    done: set[str] = set()
    for start in arrows:
        visit(start, [start])
    # (a package that imports its own modules, as formats/hf/__init__ does, is no circle)
    circles = [c for c in circles if not all(m.startswith(c.split(" -> ")[0] + ".") for m in c.split(" -> ")[1:-1])]
    assert not circles, f"import circles: {sorted(set(circles))}"


def test_the_model_imports_only_torch_and_its_own_parts():
    tree = ast.parse((PACKAGE / "model.py").read_text())
    third_party = {n.names[0].name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)}
    third_party |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert third_party - {"__future__", "math", "pathlib", "typing", "torch", "mingpt"} == set()
    assert {layer_of(m) for m in graph()["mingpt.model"]} <= {"utils", "nn", "formats"}


def test_no_library_module_imports_a_job_and_jobs_import_no_job():
    arrows = graph()
    jobs = {m for m in arrows if m.startswith("mingpt.jobs.")} - {"mingpt.jobs.pipeline", "mingpt.jobs.recipes"}
    assert not [f"{m} -> {d}" for m, deps in arrows.items() for d in deps & jobs]


def test_torchft_is_imported_by_one_module_only():
    """torchft's internals stay in one adapter, imported only when DiLoCo runs."""
    importers = set()
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            if any(n.split(".")[0] == "torchft" for n in names):
                importers.add(name)
    assert importers == {"mingpt.distributed.diloco.torchft_adapter"}
    users = {m for m, deps in graph().items() if "mingpt.distributed.diloco.torchft_adapter" in deps}
    assert users == {"mingpt.distributed.diloco.strategy", "mingpt.jobs.diloco"}


def test_the_top_level_holds_mingpts_four_files_and_the_command_line_and_every_room_is_small():
    flat = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert flat == TOP_LEVEL
    too_long = sorted(f"{p.relative_to(PROJECT_ROOT)} ({n})" for p in PACKAGE.rglob("*.py")
                      if (n := len(p.read_text().splitlines())) > 450)
    assert not too_long, f"modules over 450 lines: {too_long}"
    assert len((PACKAGE / "trainer.py").read_text().splitlines()) <= 400
    long_functions = []
    for p in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long_functions.append(f"{p.relative_to(PROJECT_ROOT)}:{node.name} ({node.end_lineno - node.lineno + 1})")
    assert not long_functions, f"functions of 60 or more lines: {long_functions}"


def test_the_readme_layout_names_every_module():
    readme = (PROJECT_ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    named = set(re.findall(r"mingpt/([\w/]+\.py|[\w/]+/)", layout))
    files = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    files |= {f"{p.relative_to(PACKAGE)}/" for p in PACKAGE.rglob("*") if p.is_dir() and p.name != "__pycache__"}
    missing = sorted(files - named)
    assert not missing, f"README.md's layout does not name: {missing}"
