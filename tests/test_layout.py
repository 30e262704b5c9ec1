"""The shape of the library (README.md, "Layout"): which module may import which, no import
circles, and a layout section that names every module. Read from the source with ast: nothing
is imported or run."""
import ast
import re
from pathlib import Path

from helpers import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "mingpt"
BASE = {"mingpt.utils"}  # what everything may use
TRAINING = {"mingpt.checkpoint", "mingpt.diloco", "mingpt.distributed", "mingpt.evaluate", "mingpt.kernels",
            "mingpt.optim", "mingpt.parallel", "mingpt.run_folder", "mingpt.runtime", "mingpt.tracking"}
# module -> the mingpt modules it may import (jobs: anything but other jobs; see RULES_FOR)
RULES = {
    "mingpt": {"mingpt.model", "mingpt.trainer", "mingpt.utils"},
    "mingpt.__main__": {"mingpt.cli"},
    "mingpt.utils": set(),
    "mingpt.layers": BASE | {"mingpt.kernels.banded"},
    "mingpt.kernels": {"mingpt.kernels.linear", "mingpt.kernels.memory"},
    "mingpt.kernels.linear": set(),
    "mingpt.kernels.memory": set(),
    "mingpt.kernels.banded": set(),
    "mingpt.generate": BASE | {"mingpt.kernels"},
    "mingpt.decode": BASE | {"mingpt.generate"},  # static-shape decoding: handed the model, never imports it
    "mingpt.model": BASE | {"mingpt.layers", "mingpt.generate", "mingpt.decode", "mingpt.pretrained"},
    "mingpt.pretrained": BASE | {"mingpt.checkpoint", "mingpt.hf", "mingpt.run_folder"},
    # hf/: the families and what they share; they import nothing of mingpt but utils and each other
    "mingpt.hf": BASE | {"mingpt.hf.common", "mingpt.hf.files", "mingpt.hf.gpt2", "mingpt.hf.openai_gpt",
                         "mingpt.hf.gpt_neo"},
    "mingpt.hf.files": BASE,
    "mingpt.hf.common": BASE,
    "mingpt.hf.gpt2": BASE | {"mingpt.hf.common"},
    "mingpt.hf.openai_gpt": BASE | {"mingpt.hf.common"},
    "mingpt.hf.gpt_neo": BASE | {"mingpt.hf.common"},
    "mingpt.checkpoint": BASE,
    "mingpt.tracking": set(),  # TensorBoard / W&B, imported by the Trainer only when asked
    "mingpt.run_folder": BASE | {"mingpt.checkpoint", "mingpt.distributed"},
    "mingpt.distributed": BASE,
    "mingpt.optim": BASE,
    "mingpt.parallel": BASE | {"mingpt.distributed", "mingpt.diloco"},  # (diloco: only when it is asked for)
    "mingpt.diloco": BASE | {"mingpt.distributed"},  # torchft itself only inside, when enabled
    "mingpt.runtime": BASE | {"mingpt.distributed", "mingpt.kernels"},
    "mingpt.evaluate": BASE | {"mingpt.distributed"},
    "mingpt.trainer": BASE | TRAINING,
    "mingpt.bpe": BASE,
    "mingpt.char": BASE,
    "mingpt.tokenizers": BASE | {"mingpt.bpe", "mingpt.char", "mingpt.hf"},  # hf: a pretrained model's tokenizer
    "mingpt.data": BASE | {"mingpt.char"},
    "mingpt.shards": BASE,  # a Hugging Face dataset -> token shards; handed its tokenizer
    "mingpt.pipeline": BASE | TRAINING - {"mingpt.runtime"} | {
        "mingpt.data", "mingpt.hellaswag", "mingpt.model", "mingpt.shards", "mingpt.tokenizers", "mingpt.trainer"},
    "mingpt.hellaswag": BASE,  # a task's items: no model, no tokenizer
    "mingpt.lm_eval_bridge": BASE | {"mingpt.evaluate", "mingpt.pipeline"},
    "mingpt.recipes": BASE,  # a table of overrides: data, no machinery
    "mingpt.cli": BASE | {"mingpt.recipes"},  # (it imports the jobs by name, when one runs)
}


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
            for alias in node.names:  # `from mingpt import kernels` imports mingpt.kernels
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return found


def graph() -> dict[str, set[str]]:
    known = set(modules())
    return {name: imports_of(path, known) for name, path in modules().items()}


def rules_for(name: str) -> set[str]:
    if name.startswith("mingpt.jobs"):  # a job may use the library (and cli, to run as a module)
        return {m for m in modules() if not m.startswith("mingpt.jobs")} | {"mingpt.cli"}
    return RULES[name]


def test_every_module_has_a_rule_and_imports_only_what_it_may():
    arrows = graph()
    unruled = [m for m in arrows if not m.startswith("mingpt.jobs") and m not in RULES]
    assert not unruled, f"modules without an import rule in tests/test_layout.py: {unruled}"
    against = [f"{m} -> {dep}" for m, deps in arrows.items() for dep in sorted(deps - rules_for(m) - {m})]
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
    assert not circles, f"import circles: {sorted(set(circles))}"


def test_model_imports_only_torch_and_its_own_parts():
    tree = ast.parse((PACKAGE / "model.py").read_text())
    third_party = {n.names[0].name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)}
    third_party |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert third_party - {"__future__", "math", "pathlib", "typing", "torch", "mingpt"} == set()
    assert graph()["mingpt.model"] <= {"mingpt.utils", "mingpt.layers", "mingpt.generate", "mingpt.decode",
                                       "mingpt.pretrained"}


def test_no_module_imports_a_job_and_jobs_import_no_job():
    arrows = graph()
    assert not [f"{m} -> {d}" for m, deps in arrows.items() for d in deps if d.startswith("mingpt.jobs")]


def test_the_readme_layout_names_every_module():
    readme = (PROJECT_ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    named = set(re.findall(r"mingpt/([\w/]+\.py|[\w]+/)", layout))
    files = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.parent == PACKAGE}
    files |= {f"{p.name}/" for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    files |= {str(p.relative_to(PACKAGE)) for package in ("kernels", "hf")
              for p in (PACKAGE / package).glob("*.py") if p.name != "__init__.py"}
    files -= {"__init__.py", "__main__.py"}
    missing = sorted(files - named)
    assert not missing, f"README.md's layout does not name: {missing}"
