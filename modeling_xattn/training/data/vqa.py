"""VQA answers as the official VQA evaluation reads them (GT-Vision-Lab/VQA, PythonEvaluationTools/vqaEvaluation/
vqaEval.py, which LAVIS and BLIP copy): the answer normalisation, the accuracy of one answer against the human
answers (averaged over the 10-choose-9 subsets of the annotators), and the official files' rows.

The official rules, followed here to the letter:
- a predicted answer: newlines and tabs become spaces, it is stripped, then `process_punctuation` and
  `process_digit_article` (lower case, number words to digits, articles dropped, contractions restored);
- the human answers: as given (no stripping, no lower case); `process_punctuation` only, and only when the
  annotators did not all give the same answer;
- accuracy = mean over each annotator left out of min(1, #other annotators who gave the predicted answer / 3);
  the overall figure is the mean over questions, as a percentage rounded to 2 places.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll",
    "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd",
    "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've",
    "she'dve": "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's", "theyd": "they'd",
    "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = ("a", "an", "the")
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?",
               "!")
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # (sic: the official pattern)
COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def process_punctuation(text: str) -> str:
    """The official punctuation rule: a mark next to a space (or any text with a digit,digit comma) is deleted,
    otherwise replaced by a space; periods not between digits are deleted (at most 32 of them: the official code
    passes `re.UNICODE` as `sub`'s count)."""
    out = text
    for mark in PUNCTUATION:
        if (mark + " " in text or " " + mark in text) or COMMA_STRIP.search(text) is not None:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return PERIOD_STRIP.sub("", out, re.UNICODE)


def process_digit_article(text: str) -> str:
    """Lower case, number words as digits, articles dropped, contractions restored ("dont" -> "don't")."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES]
    return " ".join(words)


def normalize_answer(answer: str) -> str:
    """A predicted answer as the official evaluation compares it."""
    answer = str(answer).replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(answer))


def human_answers(answers: list[str]) -> list[str]:
    """The annotators' answers as the official evaluation compares them: punctuation processed only where they
    disagree."""
    answers = [str(a) for a in answers]
    if len(set(answers)) > 1:
        answers = [process_punctuation(a) for a in answers]
    return answers


def accuracy_of_matches(matches: int, annotators: int = 10) -> float:
    """The official accuracy of an answer that `matches` of `annotators` gave: the mean, over each annotator left out,
    of min(1, matches among the others / 3). For 10 annotators: 1 -> 0.3, 2 -> 0.6, 3 -> 0.9, 4 or more -> 1."""
    if annotators == 0:
        return 0.0
    left_in = min(1.0, matches / 3.0)  # an annotator who did not give it is left out
    left_out = min(1.0, (matches - 1) / 3.0)  # one who did is left out
    return ((annotators - matches) * left_in + matches * left_out) / annotators


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """The official accuracy (0-1) of one predicted answer against one question's human answers."""
    given = human_answers(answers)
    return accuracy_of_matches(given.count(normalize_answer(prediction)), len(given))


def answer_accuracies(answers: list[str]) -> dict[str, float]:
    """Every answer's official accuracy for one question, for the answers the annotators gave (any other scores 0),
    keyed by the answer as the evaluation compares it."""
    given = human_answers(answers)
    return {answer: accuracy_of_matches(count, len(given)) for answer, count in Counter(given).items()}


def overall_accuracy(accuracies: list[float]) -> float:
    """The official overall figure: the mean accuracy as a percentage, rounded to 2 places."""
    return round(100.0 * sum(accuracies) / len(accuracies), 2) if accuracies else 0.0


# The official download unpacks to these names: v2_OpenEnded_mscoco_train2014_questions.json,
# v2_mscoco_train2014_annotations.json, train2014/COCO_train2014_000000000009.jpg (and the same for val2014); the test
# questions (v2_OpenEnded_mscoco_test-dev2015_questions.json, ..._test2015_...) come without annotations and their
# images are test2015/COCO_test2015_<id>.jpg.
OFFICIAL_SUBTYPES = {"train": "train2014", "validation": "val2014"}
TEST_SUBTYPES = ("test-dev2015", "test2015")  # `--split test`: test-dev where its questions are present


def find_official_file(root: Path, name: str) -> Path | None:
    """`name` in `root` or one folder below it (the zips unpack either way), or None."""
    return next((p for p in (root / name, *sorted(root.glob(f"*/{name}"))) if p.is_file()), None)


def _required(root: Path, name: str) -> Path:
    path = find_official_file(root, name)
    if path is None:
        raise FileNotFoundError(f"--data_dir {root}: no {name} (in it or one folder below); the official VQAv2 "
                                "download unpacks the questions, annotations and images of each split there")
    return path


def official_splits(root: str) -> list[str]:
    """The splits whose questions file is under `root`: train, validation (val2014), test (test-dev2015 or
    test2015, questions only)."""
    root = Path(root)
    found = [split for split, sub in OFFICIAL_SUBTYPES.items()
             if find_official_file(root, f"v2_OpenEnded_mscoco_{sub}_questions.json")]
    if any(find_official_file(root, f"v2_OpenEnded_mscoco_{sub}_questions.json") for sub in TEST_SUBTYPES):
        found.append("test")
    return found


def official_vqa_rows(root: str, split: str) -> list[dict]:
    """The rows of an official VQAv2 split, one per question: its image path, the question, the ten human answers
    (none for the test questions, which the evaluation server scores from `vqa_results.json`) and its ids and types.
    Every question of the file is a row, so a results file answers all of them (the server checks)."""
    root = Path(root)
    if split == "test":
        subtype = next((sub for sub in TEST_SUBTYPES
                        if find_official_file(root, f"v2_OpenEnded_mscoco_{sub}_questions.json")), TEST_SUBTYPES[0])
        images_subtype = "test2015"  # test-dev's photos are a subset of test2015's
    elif split in OFFICIAL_SUBTYPES:
        subtype = images_subtype = OFFICIAL_SUBTYPES[split]
    else:
        raise ValueError(f"VQAv2's splits are train, validation and test (asked: {split!r})")
    with open(_required(root, f"v2_OpenEnded_mscoco_{subtype}_questions.json"), encoding="utf-8") as f:
        questions = json.load(f)["questions"]
    annotations = {}
    if split != "test":
        with open(_required(root, f"v2_mscoco_{subtype}_annotations.json"), encoding="utf-8") as f:
            annotations = {a["question_id"]: a for a in json.load(f)["annotations"]}
    images = next((p for p in (root / images_subtype, *sorted(root.glob(f"*/{images_subtype}"))) if p.is_dir()),
                  root / images_subtype)
    rows = []
    for question in questions:
        annotation = annotations.get(question["question_id"], {})
        rows.append({
            "image": str(images / f"COCO_{images_subtype}_{question['image_id']:012d}.jpg"),
            "question": question["question"], "text": question["question"],
            "answers": [a["answer"] for a in annotation.get("answers", [])],
            "image_id": question["image_id"], "question_id": question["question_id"],
            "answer_type": annotation.get("answer_type", ""), "question_type": annotation.get("question_type", ""),
        })
    return rows
