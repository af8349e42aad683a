#!/usr/bin/env python3
"""Fail when a crate's top-level modules import each other in a circle.

For each crate's src/ (default: proxy, filters, config), every top-level
module is a node: `src/x.rs` and/or the folder `src/x/` are module `x`; the
crate root (main.rs / lib.rs) is the node `crate`. An edge A -> B is any
`crate::B...` reference in a file of A: `use crate::b::...` lines, grouped
imports (`use crate::{a, b::c}`) and inline paths (`crate::b::f()`).
Nested paths count for their top-level module (`crate::gate::reload::x`
is `gate`). Comments are ignored, so doc links are not edges. `super::`
paths are not followed: inside a folder they stay in the same node.

Prints every strongly connected group of modules (a cycle) with the edges
that make it, each with file:line, and exits 1 if there is one.

    python3 scripts/check-module-cycles.py [crate-dir ...] [--graph]

`--graph` also prints every module's imports, lowest module first.
"""

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CRATES = ["proxy", "filters", "config"]
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def strip_comments_and_strings(text):
    """Blank out comments, string and char literals, keeping line breaks."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append("\n" * text.count("\n", i, j))
            i = j
        elif c == "r" and re.match(r'r#*"', text[i:i + 40]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'r(#*)"', text[i:])
            end = '"' + m.group(1)
            j = text.find(end, i + len(m.group(0)))
            j = n if j < 0 else j + len(end)
            out.append("\n" * text.count("\n", i, j))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j += 1
            out.append("\n" * text.count("\n", i, j))
            i = j
        elif c == "'":
            # A char literal ('a', '\n', '\u{..}') or a lifetime ('a).
            m = re.match(r"'(\\.[^']*|[^\\'])'", text[i:])
            if m:
                i += len(m.group(0))
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def brace_group(text, start):
    """Top-level names in the `{...}` group that opens at text[start]."""
    depth, j, names, item = 0, start, [], ""
    while j < len(text):
        c = text[j]
        if c == "{":
            depth += 1
            if depth == 1:
                j += 1
                continue
        elif c == "}":
            depth -= 1
            if depth == 0:
                names.append(item)
                break
        elif c == "," and depth == 1:
            names.append(item)
            item = ""
            j += 1
            continue
        if depth == 1:
            item += c
        j += 1
    result = []
    for item in names:
        m = IDENT.search(item)
        if m:
            result.append(m.group(0))
    return result


def modules_of(src):
    """Map each .rs file under src to its top-level module name."""
    files = {}
    for dirpath, _, filenames in os.walk(src):
        for f in filenames:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, src)
            parts = rel.split(os.sep)
            if len(parts) == 1:
                name = parts[0][:-3]
                if name in ("main", "lib"):
                    name = "crate"
            else:
                name = parts[0]
            files[path] = name
    return files


def graph_of(src):
    files = modules_of(src)
    modules = set(files.values())
    edges = {}  # (a, b) -> [file:line, ...]
    for path, module in sorted(files.items()):
        with open(path, encoding="utf-8") as fh:
            text = strip_comments_and_strings(fh.read())
        for m in re.finditer(r"\bcrate\s*::\s*", text):
            after = m.end()
            if text.startswith("{", after):
                targets = brace_group(text, after)
            else:
                ident = IDENT.match(text, after)
                targets = [ident.group(0)] if ident else []
            line = text.count("\n", 0, m.start()) + 1
            where = "%s:%d" % (os.path.relpath(path, ROOT), line)
            for t in targets:
                # `crate::self`, or an item defined in the crate root.
                target = t if t in modules else "crate"
                if target != module:
                    edges.setdefault((module, target), []).append(where)
    return modules, edges


def strongly_connected(modules, edges):
    """Tarjan's algorithm; returns the groups with more than one module."""
    succ = {m: sorted({b for (a, b) in edges if a == m}) for m in modules}
    index, low, stack, on_stack, groups = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in succ[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(10000)
    for m in sorted(modules):
        if m not in index:
            visit(m)
    return groups


def layers(modules, edges):
    """Modules ordered lowest first (only meaningful without cycles)."""
    deps = {m: {b for (a, b) in edges if a == m} for m in modules}
    order, done = [], set()
    while len(done) < len(modules):
        ready = sorted(m for m in modules if m not in done and deps[m] <= done)
        if not ready:
            break
        order.extend(ready)
        done.update(ready)
    return order + sorted(set(modules) - done)


def main(argv):
    show_graph = "--graph" in argv
    crates = [a for a in argv if not a.startswith("--")] or DEFAULT_CRATES
    failed = False
    for crate in crates:
        src = os.path.join(ROOT, crate, "src")
        if not os.path.isdir(src):
            print("%s: no src/ folder" % crate)
            failed = True
            continue
        modules, edges = graph_of(src)
        groups = strongly_connected(modules, edges)
        if show_graph:
            print("%s: imports, lowest module first" % crate)
            for m in layers(modules, edges):
                deps = sorted(b for (a, b) in edges if a == m)
                print("  %-14s -> %s" % (m, ", ".join(deps) or "-"))
        if not groups:
            print("%s: %d modules, %d edges, no cycle" % (crate, len(modules), len(edges)))
            continue
        failed = True
        print("%s: %d cycle(s)" % (crate, len(groups)))
        for group in groups:
            members = set(group)
            print("  cycle among %s:" % ", ".join(group))
            for (a, b), where in sorted(edges.items()):
                if a in members and b in members:
                    more = " (+%d more)" % (len(where) - 1) if len(where) > 1 else ""
                    print("    %s -> %s   %s%s" % (a, b, where[0], more))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
