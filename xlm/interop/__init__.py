"""Checkpoint interop: the key-map language (`keymap`), safe readers (`readers`), what a
converter is (`converter`), xlm-core's layouts (`xlm_core`), format detection (`detect`, which
asks every registered family's converters about a `probe` of the checkpoint), reading a
checkpoint into a model (`convert`) and export (`export`). Each family keeps its own tables in
`xlm/models/<family>/interop.py`."""
