"""Operator-wide kopf handlers: settings at start-up, HA peering, login.

Why this module exists: these run once per process, not per job; they turn the operator's
options (carried in kopf's ``memo``) into kopf's settings.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from trainscale.operator.adapters import k8s
from trainscale.operator.autoscaling.arbiter import ArbiterSettings
from trainscale.operator.daemons.cluster import ClusterArbitration
from trainscale.operator.daemons.common import get_metrics
from trainscale.operator.daemons.options import options_of


@kopf.on.startup()
def trainscale_startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Operator-wide kopf settings."""
    # Only our explicit events (create/delete/scale/fail) reach `kubectl describe`,
    # not every log line of kopf's.
    settings.posting.level = logging.WARNING
    # kopf holds this finalizer while a job's daemon runs, so the loop stops before the job
    # is gone; the children are garbage-collected through their owner references.
    settings.persistence.finalizer = "trainscale.dev/finalizer"
    # Re-establish watches regularly so a silently dropped connection cannot stall us.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    options = options_of(memo)
    settings.peering.lifetime = options.peering_lifetime
    # One arbitration state per process, shared by every job's daemons through the memo
    # (kopf gives each resource a shallow copy of this one).
    memo.arbitration = ClusterArbitration(
        enabled=options.arbitration,
        interval_seconds=options.arbitration_interval_seconds,
        settings=ArbiterSettings(preempt_to_grow=options.arbitration_preempt_to_grow),
        namespaces=() if options.all_namespaces else options.namespaces,
    )
    get_metrics().track_state("arbitration", memo.arbitration.jobs)


@kopf.on.startup()
async def trainscale_api_threads(**_: Any) -> None:
    """The job loops' blocking API calls (``asyncio.to_thread``) get ``API_CONCURRENCY``
    threads, not asyncio's default of CPUs + 4."""
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=k8s.API_CONCURRENCY, thread_name_prefix="trainscale-api")
    )


@kopf.on.startup()
async def trainscale_ensure_peering(
    settings: kopf.OperatorSettings, logger: kopf.Logger, memo: kopf.Memo, **_: Any
) -> None:
    """With --peering, make sure kopf's peering object exists, or replicas would not coordinate."""
    if settings.peering.standalone or not settings.peering.name:
        return
    clients = k8s.load_clients()
    namespaces = options_of(memo).namespaces
    scopes: list[str | None] = [None] if settings.peering.clusterwide else list(namespaces)
    for namespace in scopes:
        if namespace is not None and any(c in namespace for c in "*?[!"):
            logger.warning(
                "Peering in namespaces matching %r: create KopfPeering %r there yourself.",
                namespace,
                settings.peering.name,
            )
            continue
        created = await asyncio.to_thread(
            k8s.apply_peering, clients, settings.peering.name, namespace
        )
        where = f"namespace {namespace}" if namespace else "cluster-wide"
        logger.info(
            "Peering %r %s: %s.", settings.peering.name, where, "created" if created else "exists"
        )


@kopf.on.login()
def trainscale_login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod, the service account; elsewhere $KUBECONFIG (read now) or ~/.kube/config."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
