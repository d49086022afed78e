"""Side-by-side rounds (`benchmarks.rounds`), the merge of repeated jobs and of the timeline job's
bytes (`benchmarks.run`)."""
from benchmarks import rounds
from benchmarks.run import merge_repeats, with_timelines


def test_every_variant_gets_one_timed_step_per_round_in_rotated_order():
    log = []
    variants = [rounds.Variant(name, None, lambda i, name=name: log.append((name, i))) for name in "abc"]
    rounds.run_rounds(variants, plain_step=lambda i: log.append(("plain", i)),
                      barrier=lambda: log.append(("barrier", None)), first=5, rounds=3)
    timed = [entry for entry in log if entry[0] in "abc"]
    assert timed == [("a", 5), ("b", 5), ("c", 5), ("b", 6), ("c", 6), ("a", 6), ("c", 7), ("a", 7), ("b", 7)]
    # each timed step is preceded by that variant's plain step and a barrier
    for index, entry in enumerate(log):
        if entry[0] in "abc":
            assert log[index - 2][0] == "plain" and log[index - 1][0] == "barrier"
    assert all(len(v.times) == len(v.plain_times) == 3 for v in variants)


def test_summary_takes_the_slowest_ranks_compute():
    variant = rounds.Variant("a", None, None, times=[0.3, 0.1, 0.2], plain_times=[0.05, 0.07, 0.06])
    summary = rounds.summarize(variant, 3, slowest=lambda mine: max(mine, 0.09))
    assert summary["step_s"] == 0.2 and summary["compute_s"] == 0.09 and summary["spec"] == "a"
    assert summary["step_times_s"] == [0.3, 0.1, 0.2]


def test_repeated_jobs_merge_to_the_median_of_each_figure():
    jobs = [{"task": "t", "compute_s": c, "results": [{"spec": "x", "step_s": s, "codec_s": k, "collective": "allreduce",
                                                       "step_times_s": [s, s]},
                                                      {"spec": "bad", "error": "refused"}]}
            for c, s, k in ((0.05, 0.10, 0.001), (0.07, 0.30, 0.003), (0.06, 0.20, 0.002))]
    merged = merge_repeats(jobs)
    x, bad = merged["results"]
    assert x["step_s"] == 0.20 and x["codec_s"] == 0.002 and x["collective"] == "allreduce"
    assert x["step_s_repeats"] == [0.10, 0.30, 0.20]
    assert x["step_times_s"] == [0.10, 0.10, 0.30, 0.30, 0.20, 0.20]
    assert bad == {"spec": "bad", "error": "refused"}
    assert merged["repeats"] == 3 and merged["compute_s"] == 0.06
    assert merge_repeats(jobs[:1]) is jobs[0]


def test_the_timeline_jobs_bytes_join_the_timed_jobs_figures_spec_by_spec():
    """The timed job runs without Horovod's timeline; a job of the same specs records it, and its
    bytes are added to the timed figures of the same spec — nothing else of it."""
    timed = {"results": [{"spec": "x", "step_s": 0.2}, {"spec": "bad", "error": "refused"},
                         {"spec": "y", "step_s": 0.3}]}
    recorded = {"results": [{"spec": "x", "timeline": "x.json", "timeline_payload_per_step": {"ALLREDUCE": 8.0},
                             "timeline_wire_bytes_per_step": 8.0, "step_s": 9.9},
                            {"spec": "bad", "error": "refused"},
                            {"spec": "y", "timeline": "y.json"}]}
    x, bad, y = with_timelines(timed, recorded)["results"]
    assert x == {"spec": "x", "step_s": 0.2, "timeline": "x.json", "timeline_payload_per_step": {"ALLREDUCE": 8.0},
                 "timeline_wire_bytes_per_step": 8.0}
    assert bad == {"spec": "bad", "error": "refused"}
    assert y == {"spec": "y", "step_s": 0.3, "timeline": "y.json"}
