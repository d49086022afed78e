"""The README's comparison table is the one scripts/compressor_table.py generates from the code."""
import importlib.util

from tests.launch import ROOT

spec = importlib.util.spec_from_file_location("compressor_table", ROOT / "scripts/compressor_table.py")
compressor_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compressor_table)


def test_readme_table_is_generated_from_the_code():
    readme = (ROOT / "README.md").read_text()
    assert compressor_table.replace_in(readme) == readme, \
        "README.md's compressor table is stale: run python scripts/compressor_table.py --write"


def test_table_has_a_row_per_compressor_and_variant():
    from horovod_powersgd.core.registry import COMPRESSORS

    rows = [line for line in compressor_table.table().splitlines() if line.startswith("| `")]
    assert len(rows) == sum(1 + len(cls.wire_variants) for cls in COMPRESSORS.values())
    for spec in COMPRESSORS:
        assert any(row.startswith(f"| `{spec}") for row in rows)


def test_replacing_keeps_the_rest_of_the_readme():
    text = "# title\n\nintro\n\n" + compressor_table.START + "\nSTALE-ROW\n" + compressor_table.END + "\n\n## After\n"
    updated = compressor_table.replace_in(text)
    assert updated.startswith("# title\n\nintro\n\n") and updated.endswith("\n\n## After\n")
    assert "STALE-ROW" not in updated and "`topk`" in updated
