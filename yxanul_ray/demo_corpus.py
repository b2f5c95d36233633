"""The offline demo corpus: real text this machine already has, written as parquet in the
sources' schema (one `text` column), so the demo exercises the same reader as the Hub.

- fineweb (English prose): Python's help topics (pydoc_data) and the docstrings of the standard
  library's modules, classes and functions, read from its source files.
- code: the standard library's own source files.
- math: generated worked problems (arithmetic, fractions, linear equations, percentages, word
  problems), each with a step-by-step solution whose answer is computed, so it is correct.
"""

from __future__ import annotations

import ast
import os
import pkgutil
import random
import sysconfig
from fractions import Fraction

import pyarrow as pa
import pyarrow.parquet as pq

FILES_PER_SOURCE = 4
ROWS_PER_GROUP = 64  # several row groups per file, so cursors cross row-group boundaries

# Modules whose import has side effects (opens windows, prints, starts servers) or is slow.
_SKIP_MODULES = ("antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test", "lib2to3",
                 "ensurepip", "venv", "pydoc_data", "__main__", "xxsubtype", "sre_", "multiprocessing.popen")


def prose_documents() -> list[str]:
    from pydoc_data.topics import topics

    docs = [f"{name}\n\n{text.strip()}" for name, text in sorted(topics.items()) if len(text) > 200]
    seen: set[str] = set()
    root = sysconfig.get_paths()["stdlib"]
    for name in _stdlib_module_names(root):
        for doc in _source_docstrings(root, name):
            if len(doc) > 120 and doc not in seen:
                seen.add(doc)
                docs.append(doc)
    return docs


def _stdlib_module_names(root: str) -> list[str]:
    """Top-level standard-library modules (under `root`) and the submodules of its packages, sorted."""
    names = []
    for info in pkgutil.iter_modules([root]):
        if info.name.startswith(("_", *_SKIP_MODULES)):
            continue
        names.append(info.name)
        if info.ispkg:
            sub = pkgutil.iter_modules([os.path.join(root, info.name)], prefix=info.name + ".")
            names += [s.name for s in sub if not s.name.rsplit(".", 1)[-1].startswith(("_", "test"))]
    return sorted(names)


def _source_docstrings(root: str, name: str) -> list[str]:
    """The docstrings a module's source gives: the module's, then its top-level classes' and
    functions' by name, each class followed by its methods' by name.

    Read from the source, not from the imported module: a module's namespace also holds what
    other imports put there, so the corpus changed with what the building process had imported
    before (measured: typing_extensions replaces typing._collect_parameters with its own, other
    docstring; concurrent.futures holds ThreadPoolExecutor only once something has asked for it),
    and importing runs every module's top-level code."""
    base = os.path.join(root, *name.split("."))
    path = os.path.join(base, "__init__.py") if os.path.isdir(base) else base + ".py"
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return []
    defs = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)

    def by_name(body: list) -> list:
        return sorted((n for n in body if isinstance(n, defs)), key=lambda n: n.name)

    nodes = [tree]
    for node in by_name(tree.body):
        nodes.append(node)
        if isinstance(node, ast.ClassDef):
            nodes += [m for m in by_name(node.body) if not isinstance(m, ast.ClassDef)]
    return [doc for doc in map(ast.get_docstring, nodes) if doc]


def code_documents(max_files: int = 400) -> list[str]:
    root = sysconfig.get_paths()["stdlib"]
    paths = sorted(
        os.path.relpath(os.path.join(d, f), root)
        for d, dirs, files in os.walk(root)
        if "site-packages" not in d and "/test" not in d and "idlelib" not in d
        for f in files if f.endswith(".py")
    )[:max_files]
    docs = []
    for p in paths:
        with open(os.path.join(root, p), encoding="utf-8", errors="replace") as f:
            text = f.read()
        if len(text) > 200:
            docs.append(f"# file: {p}\n{text}")
    return docs


def math_documents(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    makers = [_arithmetic, _fractions, _linear_equation, _percentage, _word_problem, _sequence]
    return [makers[i % len(makers)](rng) for i in range(count)]


def _arithmetic(rng: random.Random) -> str:
    a, b, c = rng.randint(12, 999), rng.randint(12, 999), rng.randint(2, 40)
    return (f"Problem: Compute ({a} + {b}) x {c}.\n"
            f"Solution: First add: {a} + {b} = {a + b}. Then multiply: {a + b} x {c} = {(a + b) * c}.\n"
            f"Answer: {(a + b) * c}")


def _fractions(rng: random.Random) -> str:
    p, q = Fraction(rng.randint(1, 9), rng.randint(2, 12)), Fraction(rng.randint(1, 9), rng.randint(2, 12))
    lcd = p.denominator * q.denominator // _gcd(p.denominator, q.denominator)
    return (f"Problem: Add the fractions {p} and {q}.\n"
            f"Solution: The least common denominator of {p.denominator} and {q.denominator} is {lcd}. "
            f"{p} = {p.numerator * lcd // p.denominator}/{lcd} and {q} = {q.numerator * lcd // q.denominator}/"
            f"{lcd}. Their sum is {p.numerator * lcd // p.denominator + q.numerator * lcd // q.denominator}/"
            f"{lcd}, which simplifies to {p + q}.\nAnswer: {p + q}")


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


def _linear_equation(rng: random.Random) -> str:
    x, a, b = rng.randint(-20, 20), rng.randint(2, 15), rng.randint(-50, 50)
    c = a * x + b
    return (f"Problem: Solve for x: {a}x + ({b}) = {c}.\n"
            f"Solution: Subtract {b} from both sides: {a}x = {c - b}. Divide both sides by {a}: x = {x}.\n"
            f"Check: {a} x {x} + ({b}) = {a * x + b}.\nAnswer: x = {x}")


def _percentage(rng: random.Random) -> str:
    base, pct = rng.randint(2, 400) * 5, rng.choice([5, 10, 12, 15, 20, 25, 30, 40, 50, 75])
    part = Fraction(base * pct, 100)
    return (f"Problem: What is {pct}% of {base}?\n"
            f"Solution: {pct}% means {pct}/100. Multiply: {base} x {pct}/100 = {base * pct}/100 = "
            f"{float(part):g}.\nAnswer: {float(part):g}")


def _word_problem(rng: random.Random) -> str:
    name = rng.choice(["Ada", "Grace", "Alan", "Emmy", "Srinivasa", "Sofia", "Carl", "Hypatia"])
    boxes, per_box, eaten = rng.randint(3, 12), rng.randint(6, 24), rng.randint(1, 20)
    total = boxes * per_box
    return (f"Problem: {name} buys {boxes} boxes of pencils with {per_box} pencils in each box and gives away "
            f"{eaten} pencils. How many pencils are left?\n"
            f"Solution: {name} starts with {boxes} x {per_box} = {total} pencils. After giving away {eaten}, "
            f"{total} - {eaten} = {total - eaten} remain.\nAnswer: {total - eaten}")


def _sequence(rng: random.Random) -> str:
    first, step, n = rng.randint(-10, 30), rng.randint(2, 9), rng.randint(5, 40)
    nth = first + (n - 1) * step
    total = n * (first + nth) // 2 if (n * (first + nth)) % 2 == 0 else Fraction(n * (first + nth), 2)
    return (f"Problem: An arithmetic sequence starts {first}, {first + step}, {first + 2 * step}, ... "
            f"Find term {n} and the sum of the first {n} terms.\n"
            f"Solution: The common difference is {step}. Term {n} is {first} + ({n} - 1) x {step} = {nth}. "
            f"The sum is {n} x ({first} + {nth}) / 2 = {total}.\nAnswer: term {nth}, sum {total}")


def write_parquet_shards(docs: list[str], out_dir: str, files: int = FILES_PER_SOURCE,
                         rows_per_group: int = ROWS_PER_GROUP) -> None:
    os.makedirs(out_dir, exist_ok=True)
    for old in os.listdir(out_dir):
        if old.endswith(".parquet"):
            os.remove(os.path.join(out_dir, old))
    per_file = max(1, -(-len(docs) // files))
    for i in range(files):
        chunk = docs[i * per_file:(i + 1) * per_file]
        if chunk:
            table = pa.table({"text": pa.array(chunk, pa.string())})
            pq.write_table(table, os.path.join(out_dir, f"part-{i:05d}.parquet"), row_group_size=rows_per_group)


def build_demo_corpus(out_dir: str, scale: float = 1.0) -> dict[str, tuple[int, int]]:
    """Write fineweb/, math/, code/ parquet shards under out_dir; returns (docs, chars) per source.

    `scale` > 1 repeats prose and code (with a numbered header, so documents stay distinct) and
    generates proportionally more math, for the pipeline's memory-vs-corpus-size benchmark.
    """
    reps = max(1, int(round(scale)))
    prose, code = prose_documents(), code_documents()
    sources = {
        "fineweb": [f"[{r}] {d}" if r else d for r in range(reps) for d in prose],
        "math": math_documents(int(20_000 * scale)),
        "code": [f"# copy {r}\n{d}" if r else d for r in range(reps) for d in code],
    }
    for name, docs in sources.items():
        write_parquet_shards(docs, os.path.join(out_dir, name))
    return {name: (len(docs), sum(map(len, docs))) for name, docs in sources.items()}
