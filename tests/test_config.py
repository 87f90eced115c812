import pytest

from egomodel.config import ConfigError, known_keys, load_config, parse_overrides


def test_defaults_follow_the_paper():
    cfg = load_config()
    t = cfg.train
    assert (t.stage1.epochs, t.stage1.lr, t.stage1.milestones, t.stage1.batch_size) == (300, 1e-3, [25, 75, 150], 32)
    assert (t.stage2.epochs, t.stage2.lr, t.stage2.milestones, t.stage2.batch_size) == (150, 1e-4, [25, 75], 32)
    assert (t.stage3.epochs, t.stage3.lr, t.stage3.milestones, t.stage3.batch_size) == (200, 1e-4, [50, 100, 150], 4)
    assert "ms_head" not in t.stage3.trainable and {"conv1", "layer4", "feedback"} <= set(t.stage3.trainable)
    assert (t.stage1.weight_decay, t.stage3.optimizer, t.eps) == (4e-5, "adam", 1e-4)
    # Ego-RNN's flow stream and two-stream model: SGD, momentum 0.9, wd 5e-4
    assert (t.flow.epochs, t.flow.lr, t.flow.milestones, t.flow.gamma, t.flow.optimizer) == (
        750, 1e-2, [150, 300, 500], 0.5, "sgd")
    assert (t.two_stream.epochs, t.two_stream.scheduler, t.two_stream.gamma, t.two_stream.slow_blocks) == (
        250, "exponential", 0.99, ["flow_layer4"])
    assert t.flow.weight_decay == t.two_stream.weight_decay == 5e-4
    assert (cfg.model.tau, cfg.model.alpha, cfg.model.insertion, cfg.data.frames) == (0.2, 1.0, "conv1", 7)


def test_dotted_overrides_reach_every_key(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  alpha: 0.5\ntrain:\n  stage3:\n    lr: 0.001\n")
    cfg = load_config(f, ["model.variant=ms", "data.test_users=[S3,S4]", "train.stage3.trainable=[conv1,feedback]"])
    assert cfg.model.alpha == 0.5 and cfg.train.stage3.lr == 1e-3 and cfg.model.variant == "ms"
    assert cfg.data.test_users == ["S3", "S4"] and cfg.train.stage3.trainable == ["conv1", "feedback"]
    assert cfg.train.stage3.epochs == 200  # untouched sibling keys keep their defaults
    assert "train.stage3.trainable" in known_keys() and "model.alpha" in known_keys()


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.alhpa=1", "model.alhpa"),
        ("model.tau=1.5", "model.tau"),
        ("model.tau=-0.1", "model.tau"),
        ("model.alpha=-1", "model.alpha"),
        ("model.insertion=layer9", "model.insertion"),
        ("train.stage3.trainable=[conv1,layer7]", "train.stage3.trainable"),
        ("model.variant=resnet", "model.variant"),
        ("data.frames=two", "data.frames"),
        ("data.image_size=100", "data.image_size"),
        ("train.stage1.milestones=[50,10]", "train.stage1.milestones"),
        ("data.val_users=[S2]", "data.val_users"),
        ("train.bogus.lr=1", "train.bogus"),
        ("train.convlstm_gates=both", "train.convlstm_gates"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace(".", r"\.")):
        load_config(None, [override])


def test_override_syntax_error():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["model.alpha"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent/config.yaml")
