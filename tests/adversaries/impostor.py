"""An impostor for tests: the real daemon offering a file under a catalog name it does not match.

``python -m tests.adversaries.impostor LABEL start --home … --model OTHER.gguf`` runs
``inferad start`` unchanged except that every model it loads is labelled LABEL (say
``gemma-3-270m``) whatever its sha256, and the binding rule
(:func:`inferad.models.check_label`) is switched off in this process: it signs and
gossips adverts that offer LABEL with another sha256, which honest software never
makes (it would serve such a file as ``<stem>-<sha8>``).  Honest nodes must reject
those adverts, and no request for LABEL may ever reach this node.

The shipped daemon has no way to do this: impersonation lives in tests only.
"""

from __future__ import annotations

import dataclasses
import sys

from inferad import membership as membership_module
from inferad import worker as worker_module


def main() -> None:
    label = sys.argv.pop(1)
    honest_local_model = worker_module.local_model
    worker_module.local_model = lambda spec, cache=None: dataclasses.replace(honest_local_model(spec, cache),
                                                                             name=label)
    worker_module.check_label = membership_module.check_label = lambda name, sha256: None
    from cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
