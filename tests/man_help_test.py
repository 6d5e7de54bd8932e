#!/usr/bin/env python3
"""The manual pages and --help list the same options.

    man_help_test.py --shmctl PATH --shmd PATH --man-dir DIR

Runs `shmctl --help`, `shmctl COMMAND --help` for every command that help
lists, and `shmd --help`, and reads the scdoc sources of shmctl(1), shmd(8)
and shmd.conf(5). In a man source an option is a definition: a line at the
left margin that starts with `*-` and is followed by a tab-indented line.
shmctl(1) lists the global options under "# OPTIONS" and each command's
under "## COMMAND" in "# COMMANDS"; -h/--help of a command is the global
one. shmd.conf(5) lists under "# KEYS" every long option of shmd but --help
and --config, without the dashes. Fails naming each option present in one
and missing in the other.
"""
import argparse
import re
import subprocess
import sys
from pathlib import Path

OPT = re.compile(r"--?[A-Za-z0-9][A-Za-z0-9-]*")


def help_text(cmd):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
    if r.returncode != 0:
        sys.exit(f"FAIL: {' '.join(cmd)} exited with {r.returncode}:\n{r.stdout}")
    return r.stdout


def help_sections(text):
    """{'Options': [lines], 'Subcommands': [lines], ...} of CLI11's help."""
    out, cur = {}, None
    for line in text.splitlines():
        m = re.match(r"^(\w[\w ]*):\s*$", line)
        if m:
            cur = out.setdefault(m.group(1), [])
        elif cur is not None and line.strip():
            cur.append(line)
    return out


def help_options(text):
    """Options named in the Options: section (the first column)."""
    opts = set()
    for line in help_sections(text).get("Options", []):
        m = re.match(r"^  (-\S*)", line)
        if not m:
            continue  # a continuation line of a description
        first = re.split(r"[=\s]", m.group(1))[0]
        for part in first.split(","):
            if OPT.fullmatch(part):
                opts.add(part)
    return opts


def help_commands(text):
    return {line.split()[0] for line in help_sections(text).get("Subcommands", []) if re.match(r"^  \w", line)}


def man_sections(path):
    """{(section, subsection): [lines]} of an scdoc source."""
    out, sec, sub = {}, None, None
    for line in path.read_text().splitlines():
        if line.startswith("# "):
            sec, sub = line[2:].strip(), None
        elif line.startswith("## "):
            sub = line[3:].split()[0]
        out.setdefault((sec, sub), []).append(line)
    return out


def man_definitions(lines, pattern):
    """Names of definitions (a term line followed by a tab-indented one)."""
    names = set()
    for term, body in zip(lines, lines[1:] + [""]):
        if term.startswith("*") and body.startswith("\t"):
            names.update(re.findall(pattern, term))
    return names


def man_options(lines):
    return man_definitions(lines, r"\*(--?[A-Za-z0-9][A-Za-z0-9-]*)\*")


def compare(what, from_help, from_man, problems):
    for o in sorted(from_help - from_man):
        problems.append(f"{what}: {o} is in --help but not in the manual page")
    for o in sorted(from_man - from_help):
        problems.append(f"{what}: {o} is in the manual page but not in --help")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shmctl", required=True)
    ap.add_argument("--shmd", required=True)
    ap.add_argument("--man-dir", required=True, type=Path)
    a = ap.parse_args()
    problems = []

    # shmctl: global options, the commands, each command's options.
    top = help_text([a.shmctl, "--help"])
    man = man_sections(a.man_dir / "shmctl.1.scd")
    global_man = man_options(man.get(("OPTIONS", None), []))
    compare("shmctl", help_options(top), global_man, problems)
    commands = help_commands(top)
    if not commands:
        problems.append("shmctl --help lists no commands")
    man_commands = {sub for (sec, sub) in man if sec == "COMMANDS" and sub}
    compare("shmctl commands", commands, man_commands, problems)
    inherited = global_man & {"-h", "--help"}
    for c in sorted(commands & man_commands):
        compare(f"shmctl {c}", help_options(help_text([a.shmctl, c, "--help"])),
                man_options(man.get(("COMMANDS", c), [])) | inherited, problems)

    # shmd: its options, and the keys of its configuration file.
    shmd_help = help_options(help_text([a.shmd, "--help"]))
    if not shmd_help:
        problems.append("shmd --help lists no options")
    man = man_sections(a.man_dir / "shmd.8.scd")
    compare("shmd", shmd_help, man_options(man.get(("OPTIONS", None), [])), problems)
    conf = man_sections(a.man_dir / "shmd.conf.5.scd")
    keys = man_definitions(conf.get(("KEYS", None), []), r"^\*([a-z][a-z-]*)\* =")
    long_opts = {o[2:] for o in shmd_help if o.startswith("--")} - {"help", "config"}
    compare("shmd.conf", long_opts, keys, problems)

    for p in problems:
        print("FAIL:", p)
    if problems:
        return 1
    print("the manual pages and --help agree")
    return 0


if __name__ == "__main__":
    sys.exit(main())
