"""The embedded demo corpus: the project's pathology KG (`pathology_kg.json`), synthetic
slides (`synth`), reports and corpus assembly (`corpus`), the CMU-1-Small-Region slide
(`fetch`)."""
