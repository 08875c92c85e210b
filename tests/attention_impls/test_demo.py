from attention_impls import demo
from attention_impls.registry import REGISTRY


def test_demo_table_has_every_backend_and_a_reason_for_each_unavailable_one():
    checked = []

    def fake_check(mechanism, backend):  # the real check runs in the main job; here only the table is at stake
        checked.append((mechanism, backend))
        return 1e-7, 1e-3

    table = demo.rows(check=fake_check)
    assert {(row[0], row[1]) for row in table} == {(m, b) for m in REGISTRY for b in REGISTRY[m]}
    for mechanism, backend, available, error, _, note in table:
        if available == "no":
            assert note and error == "-", (mechanism, backend)
        elif backend != "reference" and (mechanism, backend) in checked:
            assert error.startswith("1.0e-07")
    assert ("dilated", "gather") in checked


def test_demo_check_backend_is_accurate():
    error, seconds = demo.check_backend("dilated", "gather", shape=(1, 64, 2, 8))
    assert error < 1e-5 and seconds > 0
