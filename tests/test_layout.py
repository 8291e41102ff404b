"""The module layout rules (COMMON "How we build", issue 12): checked on the source, so a shortcut fails CI."""

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PULSE = sorted((ROOT / "pulse").glob("*.py"))


def _imports(path):
    """[(module, names)] for every import statement in `path` (names empty for `import x`)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
    return found


def _pulse_deps(path):
    """The pulse modules `path` imports (by stem)."""
    deps = set()
    for module, names in _imports(path):
        if module == "pulse":
            deps.update(names)
        elif module.startswith("pulse."):
            deps.add(module.split(".")[1])
    return deps - {path.stem}


def test_the_domain_never_imports_the_web_layers():
    for path in PULSE:
        web = [
            module
            for module, _ in _imports(path)
            if module.split(".")[0] in ("handlers", "console", "run", "web", "sandbox")
        ]
        assert not web, f"pulse/{path.name} imports {web}: pulse/ is the domain, the web layers import it"


def test_the_console_and_the_api_share_only_through_web_py():
    """console/ never imports handlers/ (nor the reverse): what both need lives in web.py (design review 2.1)."""
    for package, other in (("console", "handlers"), ("handlers", "console")):
        for path in sorted((ROOT / package).glob("*.py")):
            reach = [module for module, _ in _imports(path) if module.split(".")[0] == other]
            assert not reach, f"{package}/{path.name} imports {reach}: share it through web.py"
    for module, _ in _imports(ROOT / "web.py"):
        assert module.split(".")[0] not in ("handlers", "console", "run"), module


def test_the_stripe_readers_are_pure():
    """pulse/stripe_objects.py reads JSON: the standard library and one time conversion, no models, no I/O."""
    for module, names in _imports(ROOT / "pulse" / "stripe_objects.py"):
        top = module.split(".")[0]
        if top == "pulse":
            assert (module, names) == ("pulse.db", ["from_timestamp"]), (module, names)
        else:
            assert top in sys.stdlib_module_names, module


def test_pulse_modules_import_each_other_without_cycles():
    """No back and forth: each pulse module only depends on modules below it."""
    graph = {path.stem: _pulse_deps(path) for path in PULSE}
    state = {}

    def visit(name, trail):
        state[name] = "open"
        for dep in sorted(graph.get(name, ())):
            assert state.get(dep) != "open", "import cycle: " + " -> ".join([*trail, name, dep])
            if dep not in state:
                visit(dep, [*trail, name])
        state[name] = "done"

    for name in graph:
        if name not in state:
            visit(name, [])


def test_no_module_reaches_for_another_modules_private_names():
    """A helper used elsewhere is public where a newcomer looks (webhooks once called subscriptions._locking)."""
    for path in [*PULSE, *(ROOT / "handlers").glob("*.py"), *(ROOT / "console").glob("*.py")]:
        tree = ast.parse(path.read_text())
        modules = {
            alias.asname or alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module in ("pulse", "handlers", "console")
            for alias in node.names
        }
        private = {
            f"{node.value.id}.{node.attr}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        }
        imported = {
            f"{node.module}.{alias.name}"
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
            and (node.module or "").split(".")[0] in ("pulse", "handlers", "console")
            for alias in node.names
            if alias.name.startswith("_") and not alias.name.startswith("__")
        }
        assert not private | imported, f"{path.relative_to(ROOT)} uses {sorted(private | imported)}"


def test_route_modules_end_with_their_route_list_and_are_all_served():
    """Each module with `default_handlers` ends with it (route -> handler at a glance) and is in run.HANDLER_MODULES."""
    [listed] = [
        ast.literal_eval(node.value)
        for node in ast.parse((ROOT / "run.py").read_text()).body
        if isinstance(node, ast.Assign)
        and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["HANDLER_MODULES"]
    ]
    found = []
    for package in ("handlers", "console", "sandbox"):
        for path in sorted((ROOT / package).glob("*.py")):
            body = ast.parse(path.read_text()).body
            names = [t.id for node in body if isinstance(node, ast.Assign) for t in node.targets if hasattr(t, "id")]
            if "default_handlers" in names:
                found.append(f"{package}.{path.stem}")
                last = body[-1]
                assert isinstance(last, ast.Assign) and last.targets[0].id == "default_handlers", path.name
    assert sorted(found) == sorted(listed)


# Over the ceiling before it was checked here; each is to be split by idea, not by line count.
LONG_FILES: set[str] = set()


def test_files_stay_under_the_400_line_ceiling():
    """RULES: about 300 lines a module, 400 at most, for .py and .html files alike."""
    paths = [
        *ROOT.glob("*.py"),
        *(p for d in ("pulse", "handlers", "console", "sandbox", "bench", "tests") for p in (ROOT / d).rglob("*.py")),
        *(ROOT / "templates").rglob("*.html"),
    ]
    long = {str(p.relative_to(ROOT)) for p in paths if len(p.read_text().splitlines()) > 400}
    assert long <= LONG_FILES, f"over 400 lines: {sorted(long - LONG_FILES)}; split by idea"
