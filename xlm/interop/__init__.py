"""Checkpoint interop: the key-map language (`keymap`), safe readers (`readers`), what a
converter is (`converter`), xlm-core's layouts (`xlm_core`), format detection (`detect`) and
export (`export`). Each family keeps its own tables in `xlm/models/<family>/interop.py`."""
