"""The text of completions and reports, with one set of rules that data preparation,
evaluation, the judge and the reward twins share: format-tag spans (`spans`), completion
decoding (`decode`) and whole-word entity matching (`matcher`, the project's one
Aho-Corasick matcher)."""
