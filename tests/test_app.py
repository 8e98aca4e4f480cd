from app.ui import summary_table


def test_summary_of_a_model(tiny_dir):
    table, status = summary_table(str(tiny_dir))
    assert list(table.tower) == ["vision", "text"] and table.loc[0, "heads per layer"] == "4"
    assert "M parameters" in status


def test_bad_spec_is_a_message_not_a_traceback():
    table, status = summary_table("ViT-B-99:nope")
    assert table.empty and status.startswith("**Could not load the model:**") and "unknown model" in status
