from contract.model_spec import Manifest, ModelSpec
from server.settings import PROJECT_ROOT


def test_bucket_for_picks_smallest_fitting_bucket():
    spec = ModelSpec(seq_buckets=(32, 64, 128))
    assert [spec.bucket_for(n) for n in (1, 32, 33, 64, 65, 128)] == [32, 32, 64, 64, 128, 128]


def test_config_pbtxt_declares_dynamic_batching_and_signature():
    text = ModelSpec(max_batch_size=64).config_pbtxt(parameters={"intra_op_threads": "2"})
    assert 'backend: "python"' in text and "max_batch_size: 64" in text
    assert text.count("data_type: TYPE_INT64") == 3 and "dims: [ -1 ]" in text
    assert 'name: "score"' in text and "TYPE_FP32" in text and "dims: [ 1 ]" in text
    assert "dynamic_batching" in text and "max_queue_delay_microseconds" in text
    # No queue policy: request timeouts made Triton 2.51's batcher stall ~500 ms (see ModelSpec).
    assert "default_queue_policy" not in text
    assert "kind: KIND_CPU" in text and "platform:" not in text


def test_committed_config_matches_the_spec():
    """The committed config is the one `make run`'s trained version is served with (a
    shared-prefix version: training's default), so a first export leaves the tree clean."""
    committed = (PROJECT_ROOT / "model_repository" / "reranker" / "config.pbtxt").read_text()
    assert committed == ModelSpec.shared_prefix().config_pbtxt(parameters={"intra_op_threads": "2"})


def test_manifest_round_trip(tmp_path):
    m = Manifest(spec=ModelSpec(seq_buckets=(16, 32)), base_model="tiny", metrics={"ndcg@10": 0.5})
    m.write(tmp_path / "manifest.json")
    back = Manifest.read(tmp_path / "manifest.json")
    assert back.spec == m.spec and back.metrics == m.metrics and back.base_model == "tiny"
