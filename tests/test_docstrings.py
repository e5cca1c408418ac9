"""Every public function, class and method in the package has a docstring, as the README promises."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "minirlhf"
DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def missing_docstrings(root: pathlib.Path) -> tuple[list[str], int]:
    """("path:line name" of every undocumented public definition under `root`, number of files read).

    Public: a module-level function or class, or a method of a module-level class (private classes included),
    whose name does not start with "_"."""
    missing, files = [], 0
    for path in sorted(root.rglob("*.py")):
        files += 1
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        where = path.relative_to(root.parent)
        for node in tree.body:
            if not isinstance(node, DEFS):
                continue
            if not node.name.startswith("_") and ast.get_docstring(node) is None:
                missing.append(f"{where}:{node.lineno} {node.name}")
            if isinstance(node, ast.ClassDef):
                for sub in node.body:
                    if isinstance(sub, DEFS) and not sub.name.startswith("_") and ast.get_docstring(sub) is None:
                        missing.append(f"{where}:{sub.lineno} {node.name}.{sub.name}")
    return missing, files


def test_every_public_definition_has_a_docstring():
    missing, files = missing_docstrings(PACKAGE)
    assert files >= 30, f"read only {files} files under {PACKAGE}"  # the walk found the package
    assert not missing, f"{len(missing)} public definitions without a docstring:\n" + "\n".join(missing)


def test_the_check_finds_what_is_missing(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text('def f():\n    """Documented."""\n\n\ndef g():\n    return 1\n\n\ndef _h():\n    pass\n')
    (pkg / "sub" / "b.py").write_text(
        'class C:\n    """Documented."""\n\n    def m(self):\n        pass\n\n    def _p(self):\n        pass\n\n\n'
        'class _D:\n    def forward(self):\n        pass\n\n\nclass E:\n    x: int\n')
    missing, files = missing_docstrings(pkg)
    assert files == 2
    assert missing == ["pkg/a.py:5 g", "pkg/sub/b.py:4 C.m", "pkg/sub/b.py:12 _D.forward", "pkg/sub/b.py:16 E"]
