"""Test support shipped with hitl-core: the store contract suite (`contract`) and
hypothesis strategies (`strategies`), so an adapter author runs the same tests we do."""
