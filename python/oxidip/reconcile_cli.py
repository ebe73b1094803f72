"""``oxidip reconcile``: registers every file of the storage tree (``oxidip.reconcile``) in the
registry ``oxidip serve`` uses with the same environment, and lists registered instances
whose file is gone."""

import argparse
import os
import socket
import sys
from typing import TypeAlias

from oxidip import logs
from oxidip.config import Config, ConfigError, report_config_error
from oxidip.logs import one_line
from oxidip.reconcile import reconcile
from oxidip.registry import database_errors
from oxidip.serve import EXIT_FAILURE, EXIT_OK, open_migrated_registry

__all__ = ["add_parser", "run"]

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_parser(subparsers: Subparsers) -> None:
    """Registers ``oxidip reconcile``; the parser sets ``func`` to ``run``."""
    parser = subparsers.add_parser(
        "reconcile",
        help="register every file of the storage tree",
        description="Reads every stored file under OXIDIP_FILES_ROOT and registers it"
        " (idempotent); lists registered instances whose file is missing. Exit status 1 when"
        " a file could not be read or a file is missing.",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Registers every file of the storage tree; reports files it could not read and
    registered instances whose file is gone."""
    try:
        config = Config.from_env(warn_unknown=False)
    except ConfigError as error:
        return report_config_error(error.problems)
    files_root = config.core().files_root
    if not os.path.isdir(files_root):
        return report_config_error([f"OXIDIP_FILES_ROOT={config.files_root!r}: not a directory"])
    logs.configure(config.log_level, config.log_format)
    process_id = f"{socket.gethostname()}-{os.getpid()}-reconcile"
    try:
        # The rules' jobs are queued for series it completes (not those of a route() hook,
        # which runs in oxidip serve).
        registry = open_migrated_registry(config, config.forward.routes)
    except database_errors() + (OSError,) as error:
        where = "OXIDIP_DB_CONNECTION" if config.db_connection else "the SQLite registry"
        print(f"oxidip reconcile: cannot open {where}: {one_line(error)}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        report = reconcile(files_root, registry, process_id)
    except database_errors() + (OSError,) as error:
        print(f"oxidip reconcile: stopped: {one_line(error)}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        registry.close()
    print(f"registered {report.registered} files, {report.unreadable} unreadable")
    for path in report.missing_files:
        print(f"registered but missing: {path}")
    return EXIT_OK if report.unreadable == 0 and not report.missing_files else EXIT_FAILURE
