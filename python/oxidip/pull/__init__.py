"""``oxidip pull``: copies every series matching a list of queries from a PACS into oxidip's
storage and registry, and says per series whether it is complete (issue 12).

The parts, in the order a pull uses them: ``query`` (pacsnpull's JSON queries and ``-k``
flags), ``find`` (the C-FIND walk down to SERIES level), the pull job in the registry
(``oxidip.registry._pulls``: the pull, its series, their states and leases), ``schedule``
(claims, concurrency, pause, retries with backoff), ``retrieve`` (one C-MOVE or C-GET,
watched for stalls and cancelled), ``progress`` (bars on a terminal, log lines otherwise),
``report`` (the result per series; ``--find-only``'s list) and ``command`` (the CLI).
Instances arrive through the receiver's store path (C-MOVE: a running ``oxidip serve`` or
``--serve``; C-GET: an in-process receiver) and are registered by its pipeline with the
PACS's AE title as sender: a series is complete when the registry holds as many of its
instances from that AE as the C-FIND's NumberOfSeriesRelatedInstances.
"""
