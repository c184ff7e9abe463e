"""Shared warm-ups planned for the driver (no Ray, no storage: it reads and updates the store).

Trials whose methods declare the same warm-up (:meth:`raygap.config.TrialConfig.warmup`,
grouped by :func:`raygap.config.warmup_groups`) train it once: of those that would train the
warm-up's end, one (the leader) keeps its checkpoint there and the others wait for the next
Tune batch and start from it (:func:`plan_warmups`); :func:`say_warmups` says so in one line
per batch; once every member of a group is done, its warm-up is forgotten and the driver
deletes its checkpoint (:func:`drop_finished_warmups`).
"""
from __future__ import annotations


def plan_warmups(left, records: dict, recorded: dict, lone: set) -> tuple[set, dict, dict]:
    """Shared warm-ups among the trials ``left``: ``(deferred, forks, keeps)``.

    Trials with the same :meth:`TrialConfig.warmup` key form a group. With the warm-up
    ``recorded`` in the store, every member may start from it (``forks``: key -> uri; a trial
    with a checkpoint of its own resumes from that first). Otherwise, if two or more members
    would train the warm-up's end (no checkpoint of their own past it), the one furthest
    along is the leader (``keeps``: key -> warm-up key) and the members without a checkpoint
    wait for it (``deferred``); members with one resume on their own. ``lone``: warm-up keys
    not to wait for again (their leader ran and kept none)."""
    from ..config import warmup_groups

    groups = warmup_groups(left)
    deferred: set[str] = set()
    forks: dict[str, str] = {}
    keeps: dict[str, str] = {}
    for (wkey, W), members in groups.items():
        if wkey in recorded:
            forks.update({s.key: recorded[wkey]["uri"] for s in members})
            continue
        if wkey in lone:
            continue

        def own(s):        # the epoch of the trial's own checkpoint, -1 without one (a failure starts over)
            r = records.get(s.key) or {}
            e = r.get("checkpoint_epoch")
            return -1 if (not r.get("checkpoint") or e is None or r.get("status") == "failed") else int(e)

        before = [s for s in members if own(s) < W - 1]        # would train the warm-up's end
        if len(before) < 2:
            continue
        leader = max(before, key=own)                          # (the first of the furthest along)
        keeps[leader.key] = wkey
        deferred |= {s.key for s in before if s is not leader and own(s) < 0}
    return deferred, forks, keeps


def say_warmups(batch, deferred: set, forks: dict, keeps: dict, log) -> None:
    """One line on the shared warm-ups of a batch about to launch."""
    started = [s for s in batch if s.key in forks]
    if started:
        saved = sum(s.config.warmup()[1] for s in started)
        log(f"shared warm-ups: {len(started)} trial(s) start from a warm-up already trained ({saved} epochs not "
            "trained again)")
    if keeps:
        log(f"shared warm-ups: {len(keeps)} trial(s) train a warm-up for {len(deferred)} other(s), which start "
            "from it once this batch ends")


def drop_finished_warmups(store, specs) -> list[str]:
    """Forget the shared warm-ups every member of which, among ``specs``, is done; returns
    where their checkpoints are, for the caller to delete."""
    from ..config import warmup_groups

    groups = {wkey: [s.key for s in members] for (wkey, _), members in warmup_groups(specs).items()}
    recorded = store.warmups(groups)
    if not recorded:
        return []
    status = store.status_of([k for w in recorded for k in groups[w]])
    dropped = [store.drop_warmup(w) for w in recorded if all(status.get(k) == "done" for k in groups[w])]
    return [uri for uri in dropped if uri]

