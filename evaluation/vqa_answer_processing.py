"""The VQA answer normaliser of the original's `llava/eval/m4c_evaluator.py` (`EvalAIAnswerProcessor`, itself MMF's
copy of the EvalAI VQA challenge's), which TextVQA's accuracy and the VQAv2 and VizWiz upload files go through.

`normalize_answer` gives the same string as that processor for every input, its accidents included, because the
servers and the published TextVQA figure saw its output:
- `,` and `?` are deleted and `'s` split off (`"it's"` -> `"it 's"`) before anything else;
- each other punctuation mark is deleted where the text has it beside a space and replaced by a space elsewhere
  (`"a-b"` -> `"a b"`, `"a - b"` -> `"a  b"`); its digit-comma rule can never fire, the commas being gone by then;
- a period is deleted unless a digit follows (`"3.5"` stays), at most 32 of them: the original passes `re.UNICODE`
  (32) where `re.sub` takes its count;
- words are split on whitespace, number words up to ten become digits (`"none"` -> `"0"`), `a`/`an`/`the` are dropped,
  and apostrophe-less contractions are restored (`"dont"` -> `"don't"`, but `"somebody'd"` -> `"somebodyd"`, as the
  original's table has it).
"""

import re

# The original's table, as data: "written:restored" pairs. Its capitalised keys ("Im", "Ive", "Id've", "I'dve") can
# never match, the text being lowercased first; they are kept so the table stays the original's.
_CONTRACTION_PAIRS = """
aint:ain't arent:aren't cant:can't couldve:could've couldnt:couldn't couldn'tve:couldn't've couldnt've:couldn't've
didnt:didn't doesnt:doesn't dont:don't hadnt:hadn't hadnt've:hadn't've hadn'tve:hadn't've hasnt:hasn't
havent:haven't hed:he'd hed've:he'd've he'dve:he'd've hes:he's howd:how'd howll:how'll hows:how's Id've:I'd've
I'dve:I'd've Im:I'm Ive:I've isnt:isn't itd:it'd itd've:it'd've it'dve:it'd've itll:it'll let's:let's maam:ma'am
mightnt:mightn't mightnt've:mightn't've mightn'tve:mightn't've mightve:might've mustnt:mustn't mustve:must've
neednt:needn't notve:not've oclock:o'clock oughtnt:oughtn't ow's'at:'ow's'at 'ows'at:'ow's'at 'ow'sat:'ow's'at
shant:shan't shed've:she'd've she'dve:she'd've she's:she's shouldve:should've shouldnt:shouldn't
shouldnt've:shouldn't've shouldn'tve:shouldn't've somebody'd:somebodyd somebodyd've:somebody'd've
somebody'dve:somebody'd've somebodyll:somebody'll somebodys:somebody's someoned:someone'd someoned've:someone'd've
someone'dve:someone'd've someonell:someone'll someones:someone's somethingd:something'd
somethingd've:something'd've something'dve:something'd've somethingll:something'll thats:that's thered:there'd
thered've:there'd've there'dve:there'd've therere:there're theres:there's theyd:they'd theyd've:they'd've
they'dve:they'd've theyll:they'll theyre:they're theyve:they've twas:'twas wasnt:wasn't wed've:we'd've
we'dve:we'd've weve:we've werent:weren't whatll:what'll whatre:what're whats:what's whatve:what've whens:when's
whered:where'd wheres:where's whereve:where've whod:who'd whod've:who'd've who'dve:who'd've wholl:who'll whos:who's
whove:who've whyll:why'll whyre:why're whys:why's wont:won't wouldve:would've wouldnt:wouldn't
wouldnt've:wouldn't've wouldn'tve:wouldn't've yall:y'all yall'll:y'all'll y'allll:y'all'll yall'd've:y'all'd've
y'alld've:y'all'd've y'all'dve:y'all'd've youd:you'd youd've:you'd've you'dve:you'd've youll:you'll youre:you're
youve:you've
"""
CONTRACTIONS: dict[str, str] = dict(pair.split(":") for pair in _CONTRACTION_PAIRS.split())

NUMBER_WORDS: dict[str, str] = {
    word: str(number) for number, word in enumerate("zero one two three four five six seven eight nine ten".split())
} | {"none": "0"}

ARTICLES = frozenset({"a", "an", "the"})

# Periods go everywhere but before a digit; `,` and `?` are not here because they are deleted up front.
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", "!")
_PERIOD = re.compile(r"\.(?!\d)")
_PERIODS_REMOVED = 32  # `re.UNICODE`, passed by the original where `Pattern.sub` takes its count


def _strip_punctuation(text: str) -> str:
    """Deletes each punctuation mark the text has beside a space, turns the others into spaces, then drops periods."""
    stripped = text
    for mark in PUNCTUATION:
        beside_space = f"{mark} " in text or f" {mark}" in text  # decided on the text as it came in, for every mark
        stripped = stripped.replace(mark, "" if beside_space else " ")
    return _PERIOD.sub("", stripped, count=_PERIODS_REMOVED)


def normalize_answer(answer: str) -> str:
    """`answer` as the original's `EvalAIAnswerProcessor` writes it (see the module docstring)."""
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    words = [NUMBER_WORDS.get(word, word) for word in _strip_punctuation(text).split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


__all__ = ["normalize_answer"]
