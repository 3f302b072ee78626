from hpcm_tune import metrics


def test_task_names_match_the_original_design_and_map_to_scales():
    assert metrics.TASKS == ("s1_distortion", "s1_bpp", "s2_distortion", "s2_bpp", "s3_bpp")
    assert set(metrics.TASK_SCALE) == set(metrics.TASKS)
    assert set(metrics.TASK_SCALE.values()) == set(metrics.SCALES)


def test_metric_names_are_the_published_ones():
    assert metrics.WEIGHTS["s2_bpp"] == "weights/s2_bpp"
    assert metrics.TRAIN_TASKS["s1_distortion"] == "train/s1_distortion"
    assert metrics.GAMMA["s3"] == "gamma/s3"
    assert metrics.SCALE_CONTRIB["s1"] == "scale_contrib/s1"
    assert metrics.EVAL_BPP_SCALE["s2"] == "eval/bpp_s2"
    assert len(set(metrics.EVAL_METRICS)) == len(metrics.EVAL_METRICS) == 9
