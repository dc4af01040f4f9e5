"""The synthetic sample corpus: a seeded, multi-domain set of documents, drawn images and closed questions.

It exists so that the demo and the tests have a complete corpus without downloading anything:
TCM herb monographs, tongue photographs, chest radiographs, fundus photographs and H&E histology,
each document with its own images and a QA set whose answers follow from the documents. Everything
is generated from one seed (`sample_corpus.build.build_sample_corpus`), so two builds are identical.

The images are drawn, not photographed, and the questions come from templates: a system that does
well here has shown that it runs end to end, not that it works on real medical data. Figures
measured only on this corpus prove little.

Layout: `build` assembles the corpus; `domain` is the contract a domain fulfils; `questions` and
`acquisition` are what the domains share; one module or subpackage per domain, named by its key
(`tcm_herb`, `tcm_tongue`, `radiology`, `ophthalmology`, `pathology`).
"""
