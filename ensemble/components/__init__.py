"""pyinfra deploys, one per component; they run in the worker process (ensemble.worker) or under the
plain `pyinfra` CLI (deploys/*.py), put the files `ensemble.render` produced and never import orchestration."""
