"""Documents of the stories_cloze harness task: paragraphs of at least 12 words, split before their last word."""

import re

WORD = re.compile(r"^(?P<context>.*\S)\s+(?P<word>[A-Za-z]+)[.!?\"']*$", re.DOTALL)


def paragraphs(dataset):
    def split(doc):
        match = WORD.match(doc["text"].strip())
        return {"context": match["context"], "word": match["word"]}

    def usable(doc):
        text = doc["text"].strip()
        return len(text.split()) >= 12 and WORD.match(text) is not None

    return dataset.filter(usable).map(split)
