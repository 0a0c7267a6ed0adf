"""The image repository (VISOR): image records, their lifecycle, streaming transfers and
the stores that keep the files."""
