"""The COCO captioning tokenizer without Java: a pure-Python port of pycocoevalcap's PTBTokenizer.

pycocoevalcap's scorers (``Bleu``, ``Cider``) are pure Python, but its ``PTBTokenizer``
shells out to Stanford CoreNLP 3.4.1 (``java ... PTBTokenizer -preserveLines
-lowerCase``) and then drops the tokens in its ``PUNCTUATIONS`` list
(pycocoevalcap/tokenizer/ptbtokenizer.py). :func:`ptb_tokenize` is a pure-Python
re-implementation of that pipeline.

The Java tokenizer is a JFlex longest-match lexer (PTBLexer.flex). It is reproduced here
as a rule table scanned with the same semantics: at each position every rule is tried,
the longest match wins (JFlex counts trailing context, ``a/b``, in the length), ties go
to the earlier rule. The rules were transcribed from PTBLexer.flex and then calibrated
against the real stanford-corenlp-3.4.1.jar; ``tests/unit/test_metrics_captioning.py`` holds
golden outputs of that jar. What CoreNLP 3.4.1 does, and so what this does:

* lower-cases every token (after tokenising, so the few case-sensitive rules, e.g.
  "AT&T" vs "at&t", see the original case);
* splits clitics: "man's" -> "man 's", "don't" -> "do n't", "can't" -> "ca n't",
  "won't" -> "wo n't", "they're/I've/we'll/she'd/I'm" -> "'re 've 'll 'd 'm";
  curly apostrophes are normalised ("it’s" -> "it 's");
* splits assimilations before a non-letter: "cannot" -> "can not", "gonna" -> "gon na",
  "gotta", "wanna", "gimme", "lemme", and "'tis"/"'twas" -> "'t is"/"'t was";
* keeps hyphenated words ("black-and-white", "t-shirt"), numbers ("2.5", "1,000",
  "10:30", "1/2") and dotted words/acronyms ("u.s.", "e.g.") as single tokens;
* splits off other punctuation; a sentence-final period becomes its own token, except
  after a known abbreviation ("mr.", "st.", "etc.", single letters "a.") which keep it;
* maps quotes to `` '' ` ' and brackets to -LRB- -RRB- -LSB- -RSB- -LCB- -RCB-.
  Because of ``-lowerCase`` these come out as "-lrb-" etc. and are NOT in
  pycocoevalcap's PUNCTUATIONS list (which has "-LRB-"): they survive as tokens, as
  they do in the official evaluation; likewise "!!!", "?!", "%", "&", "$" survive;
* does NOT americanise spelling in 3.4.1 ("grey", "colour" unchanged).

Known differences from the Java tokenizer (all rare in captions):

* unusual Unicode symbols: the Java lexer deletes characters it cannot tokenise (for
  instance emoji outside the Basic Multilingual Plane, which are deleted here too); other
  symbols are kept here as one-character tokens, which 3.4.1 mostly but not always does;
* SGML-like tags spanning lines, Unicode line separators (U+2028, U+0085, ...) and "\\r"
  inside a caption: Java treats them as line breaks, which misaligns pycocoevalcap's
  caption/line zip; here they are spaces (pycocoevalcap itself only replaces "\\n");
* emoticons (":D", ";]"), "C#"-like tokens and some URL / e-mail / abbreviation forms
  that 3.4.1 added over the PTBLexer rules transcribed here.

Measured against the jar: identical output on 3,000 generated caption-like sentences
(contractions, abbreviations, numbers, quotes, brackets, case variants) and on ~97% of
random strings drawn from letters, digits and punctuation.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

# pycocoevalcap/tokenizer/ptbtokenizer.py: tokens dropped after tokenisation.
PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
     ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)  # fmt: skip

# ----------------------------------------------------------------------------------
# Character classes (PTBLexer.flex macros). JFlex %caseless does not apply inside
# character classes, hence the explicit [A-Z] / [a-z] classes below.
# ----------------------------------------------------------------------------------
_LETTER = r"(?:(?![\u00B2\u00B3\u00B9\u00BC-\u00BE\u2150-\u218F])[^\W\d_])"
_WORD = rf"(?:{_LETTER}|[\u00AD\u0300-\u036F])+"
_LD = rf"(?:{_LETTER}|\d)"  # letter or digit
_APOS = r"(?:['\u0092\u2019]|&apos;)"
_APOSETC = r"(?:['\u0092\u2019\u0091\u2018\u201B]|&apos;)"
_SPACE = r"[ \t\u00A0\u2000-\u200A\u3000]"
_SPACENL = rf"(?:{_SPACE}|\n)"
_SGML = r"<\/?[A-Za-z!][^>\n]*>"
_SENTEND = rf"{_SPACENL}(?:{_SPACENL}|[A-Z]|{_SGML})"
_REDAUX = rf"{_APOS}(?i:[msd]|re|ve|ll)"
_SREDAUX = rf"(?i:n){_APOSETC}(?i:t)"
_NUM = r"(?:\d*(?:[.:,\u00AD\u066B\u066C]\d+)+|\d+)"
_HYPHEN = r"[-_\u058A\u2010\u2011]"
_ACRO = r"(?:[A-Za-z](?:\.[A-Za-z])+|(?i:Canada|Sino|Korean|EU|Japan|non)-(?i:U\.S)|(?i:U\.S\.-(?:U\.K|U\.S\.S\.R)))"
_INSENTP = r"[,;:]"
_THING = (
    rf"(?:[dDoOlL]{_APOSETC}{_LD})?{_LD}+"
    rf"(?:{_HYPHEN}(?:[dDoOlL]{_APOSETC}{_LD})?{_LD}+)*"
)
_HTHING = rf"[A-Za-z0-9][A-Za-z0-9.,\u00AD]*(?:-(?:[A-Za-z0-9\u00AD]+|{_ACRO}\.))+"
_THINGA = r"[A-Z]+(?:(?:[+&]|&amp;)[A-Z]+)+"

# Abbreviation lists. Inside (?i:...) the match is caseless; a capital written outside
# it is case-sensitive, as in PTBLexer ("Ark." is a state abbreviation, "ark." is not).
_ABMONTH = r"(?i:Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)"
_ABDAYS = r"(?i:Mon|Tue|Tues|Wed|Thu|Thurs|Fri)"
_ABSTATE = (
    r"(?:(?i:Ala|Ariz|Calif|Colo|Conn|Dak|Fla|Ga|Ind|Kans?|Ky|Md|Mich|Minn|Mo|Mont|Neb|Nev"
    r"|Okla|Penn|Tenn|Va|Vt|Wisc?|Wyo)"
    r"|A(?i:rk)|D(?i:el)|I(?i:ll)|L(?i:a)|M(?i:ass)|M(?i:iss)|O(?i:re)|P(?i:a)|T(?i:ex)|W(?i:ash))"
)
_ABCOMP = (
    r"(?:(?i:Inc|Cos?|Corp|Ltd|Plc|Bancorp|Dept|Bhd|Assn|Univ|Intl|Sys)"
    r"|(?i:p)p?tys?)"
)
_ABCOMP2 = r"(?:(?i:Invt|Elec|Natl)|(?i:m)[ft](?i:g))"
_ABNUM = r"(?i:Nos?|Prop|Figs?|Pp|Art|Op)"  # abbreviations only before a number
_ABNUM2 = r"(?i:Ph|tel|est|ext|sq|ft)"
_ABPTIT = r"(?i:Jr|Sr|Bros|(?:Ed|Ph)\.D|Blvd|Rd|Esq)"
_ABTITLE = (
    r"(?:(?i:Mr|Mrs|Ms|Drs?|Profs?|Sens?|Reps?|Attys?|Lt|Col|Gen|Messrs|Govs?|Adm|Rev|Maj"
    r"|Sgt|Cpl|Pvt|Mt|Capt|Ste?|Ave|Pres|Lieut|Hon|Brig|Co?mdr|Pfc|Spc|Supts?|Det|Msgr|Rt"
    r"|Mme|Mlle|Bldg|Ct|Assoc|Asst|Ens|Insp|Adj|Adv)|M(?i:iss))"
)
_ABBREV1 = rf"(?:{_ABPTIT}|{_ABMONTH}|{_ABDAYS}|{_ABSTATE}|{_ABCOMP}|{_ABNUM2}|(?i:etc|al|seq))\."
_ABBREV4 = rf"(?:{_ACRO}|(?i:a\.k\.a)|{_ABTITLE}|(?i:vs|Alex|Wm|Jos|Cie|cf|TREAS)|{_ABCOMP2}|[A-Za-z])"

# An acronym or a single letter + "." followed by one of these (case-sensitive first
# letter) is taken to end a sentence: "U.S. The" -> "U.S." "." and "a. The" -> "a" ".".
_SENT_START = (
    r"(?:A(?i:bout|ccording|dditionally|fter|n|s|t)|A|B(?i:ut)|E(?i:arlier)"
    r"|H(?i:e|er|ere|owever)|I(?i:f|n|t)|L(?i:ast)|M(?i:any|ore|r\.|s\.)|N(?i:ow)"
    r"|O(?i:nce|ne|ther|ur)|S(?i:he|ince|o|ome|uch)"
    r"|T(?i:hat|he|hen|here|hese|hey|his)|W(?i:e|hen|hile|hat)|Y(?i:et|ou))"
)

# Words with an apostrophe that stay whole. Separate rules rather than one alternation:
# Python's alternation takes the first branch that matches, JFlex the longest.
_APOWORDS = (
    rf"{_APOS}(?i:n){_APOS}?",
    rf"[lLdDjJ]{_APOS}",
    rf"(?i:Dunkin|somethin|ol){_APOS}",
    rf"{_APOS}(?i:em)",
    rf"[A-HJ-XZn]{_APOSETC}{_LETTER}{{2}}{_LETTER}*",
    rf"{_APOS}[2-9]0(?i:s)",
    rf"{_APOS}(?i:till?)",
    rf"{_LETTER}+[aeiouyAEIOUY]{_APOSETC}[aeiouA-Z]{_LETTER}*",
    rf"{_APOS}(?i:cause)",
    r"(?i:cont'd\.?|nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l)",
)
_MISCSYMBOL = (
    "[\u00A6\u00A7\u00A8\u00A9\u00AC\u00AE\u00AF\u00B0-\u00B3\u00B4-\u00BA\u00D7\u00F7"
    "\u0387\u2020-\u2023\u2032-\u2038\u2044\u207A-\u207F\u208A-\u208E\u2100-\u214F"
    "\u2190-\u21FF\u2200-\u22FF\u2300-\u23FF\u25A0-\u27BF\u3012\u30FB]"
)

# ----------------------------------------------------------------------------------
# Token actions
# ----------------------------------------------------------------------------------


def _latex_quotes(tok: str, probably_left: bool) -> str:
    """PTBLexer's quote normalisation with its default ``latexQuotes``."""
    if probably_left:
        tok = tok.replace("&apos;", "`").replace("'", "`")
        tok = tok.replace("&quot;", "``").replace('"', "``")
    else:
        tok = tok.replace("&apos;", "'").replace('"', "''").replace("&quot;", "''")
    tok = re.sub("[\u0091\u2018\u201B\u2039]", "`", tok)
    tok = re.sub("[\u0092\u2019\u203A]", "'", tok)
    tok = re.sub("[\u0093\u201C\u00AB]", "``", tok)
    return re.sub("[\u0094\u201D\u00BB]", "''", tok)


def _currency(tok: str) -> str:
    # normalizeCurrency is on in 3.4.1: "£5" -> "# 5", "€5" -> "$ 5", "¢" -> "cents".
    tok = tok.replace("\u00A2", "cents").replace("\u00A3", "#")
    return re.sub("[\u0080\u00A4\u20A0\u20AC]", "$", tok)


_FRACTIONS = {"\u00BC": "1/4", "\u00BD": "1/2", "\u00BE": "3/4", "\u2153": "1/3", "\u2154": "2/3"}
_BRACKETS = {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-"}


def _same(tok: str) -> list[str]:
    return [tok]


def _nbsp(tok: str) -> list[str]:
    # normalizeSpace: tokens that may contain spaces get non-breaking spaces instead.
    return [re.sub(r"[ \n]", "\u00A0", tok)]


def _no_soft_hyphen(tok: str) -> list[str]:
    return [tok.replace("\u00AD", "")]


def _with_period(tok: str) -> list[str]:
    # Abbreviation at a sentence end: PTBLexer returns it and then a separate ".".
    return [tok, "."]


def _quote_right(tok: str) -> list[str]:
    return [_latex_quotes(tok, probably_left=False)]


def _quote_left(tok: str) -> list[str]:
    return [_latex_quotes(tok, probably_left=True)]


def _phone(tok: str) -> list[str]:
    return [tok.replace(" ", "\u00A0").replace("(", "-LRB-").replace(")", "-RRB-")]


def _hyphens(tok: str) -> list[str]:
    return ["--" if 3 <= len(tok) <= 4 else tok]


@dataclass(frozen=True)
class _Rule:
    """``pattern`` matches the token, optionally followed by trailing context.

    When trailing context is present the token is the named group ``tok``; the whole
    match length (token + context) decides the longest match, as in JFlex.
    """

    pattern: re.Pattern[str]
    action: Callable[[str], list[str]]


def _r(pattern: str, action: Callable[[str], list[str]] = _same) -> _Rule:
    return _Rule(re.compile(pattern), action)


# Order matters only for ties (same total length): earlier wins, as in the .flex file.
# Within one rule Python's alternation is first-match, so longer branches come first.
_RULES: tuple[_Rule, ...] = (
    # Assimilations, split before a non-letter: "cannot" -> "can" + "not", ...
    _r(r"(?P<tok>(?i:can))(?i:not)(?:[^A-Za-z]|$)"),
    _r(r"(?P<tok>(?i:gim|lem))(?i:me)(?:[^A-Za-z]|$)"),
    _r(r"(?P<tok>(?i:gon|wan))(?i:na)(?:[^A-Za-z]|$)"),
    _r(r"(?P<tok>(?i:got))(?i:ta)(?:[^A-Za-z]|$)"),
    _r(rf"(?P<tok>(?i:more)){_APOS}(?i:n)(?:[^A-Za-z]|$)"),
    _r(rf"(?P<tok>{_APOS}(?i:t))(?i:is|was)"),
    _r(_SGML, _nbsp),
    _r(r"&(?:MD|mdash|ndash);|[\u0096\u0097\u2013\u2014\u2015]", lambda t: ["--"]),
    _r(r"&amp;", lambda t: ["&"]),
    _r(r"&(?:HT|TL|UR|LR|QC|QL|QR|odq|cdq|#[0-9]+);"),
    _r(rf"(?P<tok>{_WORD}){_REDAUX}", _no_soft_hyphen),
    _r(rf"(?P<tok>[A-Za-z\u00AD]*[A-MO-Za-mo-z]\u00AD*){_SREDAUX}", _no_soft_hyphen),
    _r(_WORD, _no_soft_hyphen),
    *(_r(p) for p in _APOWORDS),
    _r(rf"(?P<tok>[yY]{_APOS}){_LETTER}"),
    _r(r"https?:\/\/[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-]"),
    _r(
        r"(?:(?:www\.(?:[^ \t\n\f\r\"<>|.!?(){},]+\.)+[a-zA-Z]{2,4})"
        r"|(?:(?:[^ \t\n\f\r\"`'<>|.!?(){},-_$]+\.)+(?:com|net|org|edu)))"
        r"(?:\/[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-])?"
    ),
    # E-mail-like: looser in 3.4.1 than in older PTBLexer versions ("a@b" is one token).
    _r(
        r"[a-zA-Z0-9][^ \t\n\f\r\"<>|(){}\u00A0]*@"
        r"(?:[^ \t\n\f\r\"<>|(){}.\u00A0]+\.)*[^ \t\n\f\r\"<>|(){}.\u00A0]+"
    ),
    _r(r"@[A-Za-z_][A-Za-z_0-9]*|#[A-Za-z][A-Za-z0-9_]*"),  # @handles, #hashtags
    _r(rf"(?P<tok>{_REDAUX})[^A-Za-z]", _quote_right),
    _r(_SREDAUX, _quote_right),
    _r(r"\d{1,2}[\-\/]\d{1,2}[\-\/]\d{2,4}"),  # date
    _r(rf"[\-+]?{_NUM}", _no_soft_hyphen),
    _r(r"[\u207A\u207B\u208A\u208B]?(?:[\u2070\u00B9\u00B2\u00B3\u2074-\u2079]+|[\u2080-\u2089]+)"),
    _r(r"(?:\d{1,4}[- \u00A0])?\d{1,4}(?:\\?\/|\u2044)\d{1,4}", _nbsp),  # fractions
    _r(r"[\u00BC\u00BD\u00BE\u2153\u2154]", lambda t: [_FRACTIONS[t]]),
    _r(
        rf"-(?:RRB|LRB|RCB|LCB|RSB|LSB)-|C\.D\.s|(?i:pro|anti)-|S(?:&|&amp;)P-500|S(?:&|&amp;)Ls"
        rf"|(?i:Cap){_APOS}(?i:n)|(?i:c){_APOS}(?i:est)|(?i:c)\+\+"
    ),
    _r(r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?\/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}"),
    _r(r"[A-Z]*\$|#"),
    _r(
        "[\u00A2\u00A3\u00A4\u00A5\u0080\u20A0\u20AC\u060B\u0E3F\u20A4\uFFE0\uFFE1\uFFE5\uFFE6]",
        lambda t: [_currency(t)],
    ),
    _r(rf"(?P<tok>{_ACRO}\.){_SPACE}+{_SENT_START}{_SPACENL}", _with_period),
    _r(rf"(?P<tok>[A-Za-z]\.){_SPACE}+{_SENT_START}{_SPACENL}", lambda t: [t[:-1], "."]),
    _r(rf"(?P<tok>{_ABBREV1}){_SENTEND}", _with_period),
    _r(_ABBREV1),
    _r(rf"(?P<tok>{_ABNUM}\.){_SPACE}?\d"),
    _r(rf"{_ABBREV4}\."),
    _r(rf"(?P<tok>{_ABBREV4}){_SPACE}"),
    _r(rf"(?P<tok>{_ACRO}){_SPACENL}"),
    _r(rf"(?P<tok>{_APOS}[0-9][0-9]){_SPACENL}"),
    _r(rf"(?P<tok>{_WORD}\.){_INSENTP}", _no_soft_hyphen),
    _r(r"(?:\([0-9]{3}\)[ \u00A0]?|[0-9]{3}[\- \u00A0.])[0-9]{3}[\- \u00A0.][0-9]{4}", _phone),
    _r(r'(?P<tok>"|&quot;)[A-Za-z0-9$]', _quote_left),
    _r(r'"|&quot;', _quote_right),
    _r(r"\+|[%&\u2030\u2031]|~|\^|\||\\|[<>]|="),
    _r(r"[(){}\[\]]", lambda t: [_BRACKETS[t]]),
    _r(r"-+", _hyphens),
    _r(r"\.{3,5}|(?:\.[ \u00A0]){2,4}\.|[\u0085\u2026]", lambda t: ["..."]),
    _r(r"@+|#+|_+|\*+|(?:\\\*){1,3}"),
    _r(rf"{_INSENTP}|[?!]+|[.\u00A1\u00BF\u037E\u0589\u061F\u06D4\u0700-\u0702\u07FA]|\/"),
    _r(rf"(?P<tok>{_HTHING}\.){_INSENTP}", _no_soft_hyphen),
    _r(_HTHING, _no_soft_hyphen),
    _r(rf"(?P<tok>{_THING}\.){_INSENTP}"),
    _r(_THING),
    _r(rf"(?P<tok>{_THINGA}\.){_INSENTP}", lambda t: [t.replace("&amp;", "&")]),
    _r(_THINGA, lambda t: [t.replace("&amp;", "&")]),
    # Observed in 3.4.1: "dog.cat", "ab5.c" and "dog!cat" are single tokens.
    _r(rf"{_LETTER}{_LD}*(?:\.{_LETTER}{_LD}*)+"),
    _r(rf"{_LETTER}+(?:[!?]{_LETTER}+)+"),
    _r(r"(?P<tok>')[A-Za-z][^ \t\n\r\u00A0]", _quote_left),
    _r(_REDAUX, _quote_right),
    _r(
        "'|''|[`\u2018\u2019\u201A\u201B\u201C\u201D\u0091\u0092\u0093\u0094\u201E\u201F"
        "\u2039\u203A\u00AB\u00BB]{1,2}",
        _quote_right,
    ),
    _r(_MISCSYMBOL),
)

_SKIP = re.compile(r"[ \t\u00A0\u2000-\u200A\u3000\u0000\u200B\u200E\u200F\uFEFF]+")
# Fast path: a plain ASCII word followed by a space/newline/end cannot be claimed by any
# other rule with a different outcome, except the assimilations handled above.
_PLAIN_WORD = re.compile(r"[A-Za-z]+(?=[ \n]|$)")
_ASSIMILATIONS = frozenset({"cannot", "gimme", "lemme", "gonna", "wanna", "gotta"})
# Characters Java reads as line breaks; pycocoevalcap only replaces "\n" (see docstring).
_OTHER_NEWLINES = re.compile("\r\n?|[\u2028\u2029\u000B\u000C\u0085]")


def _match_at(text: str, pos: int) -> tuple[int, str, Callable[[str], list[str]]] | None:
    """Longest match at ``pos``: (length consumed, token text, action)."""
    best_len, best = 0, None
    for rule in _RULES:
        m = rule.pattern.match(text, pos)
        if m is None:
            continue
        total = m.end() - pos
        if total > best_len:
            tok = m.group("tok") if "tok" in rule.pattern.groupindex else m.group(0)
            best_len, best = total, (len(tok), tok, rule.action)
    return best


def _tokenize_stream(text: str) -> list[list[str]]:
    """Tokenise a newline-separated stream, one token list per line (like -preserveLines)."""
    lines: list[list[str]] = [[]]
    pos, n = 0, len(text)
    while pos < n:
        ch = text[pos]
        if ch == "\n":
            lines.append([])
            pos += 1
            continue
        skip = _SKIP.match(text, pos)
        if skip:
            pos = skip.end()
            continue
        plain = _PLAIN_WORD.match(text, pos)
        if plain and plain.group(0).lower() not in _ASSIMILATIONS:
            lines[-1].append(plain.group(0))
            pos = plain.end()
            continue
        found = _match_at(text, pos)
        if found is None or found[0] == 0:
            # Untokenizable: PTBLexer deletes it (default "firstDelete"). Code points
            # outside the BMP are two UTF-16 units in Java, both deleted.
            if ord(ch) < 0x10000 and not (ch.isspace() or ord(ch) < 0x20):
                lines[-1].append(ch)
            pos += 1
            continue
        length, tok, action = found
        lines[-1].extend(action(tok))
        pos += length
    return lines


def ptb_tokenize(captions: Mapping[Hashable, Sequence[str | Mapping[str, str]]]) -> dict[Hashable, list[str]]:
    """Drop-in for ``pycocoevalcap.tokenizer.ptbtokenizer.PTBTokenizer().tokenize``.

    Args:
        captions: id -> list of captions, as plain strings or pycocoevalcap-style
            ``{"caption": str}`` dicts.

    Returns:
        id -> list of tokenised captions (space-joined lower-case tokens, punctuation
        removed), in input order.
    """
    ids: list[Hashable] = []
    sentences: list[str] = []
    for key, caps in captions.items():
        for cap in caps:
            text = cap["caption"] if isinstance(cap, Mapping) else cap
            ids.append(key)
            sentences.append(_OTHER_NEWLINES.sub(" ", text.replace("\n", " ")))
    # One stream, as the Java tokenizer sees the file: some rules look past a line end.
    lines = _tokenize_stream("\n".join(sentences))
    result: dict[Hashable, list[str]] = {key: [] for key in captions}
    for key, tokens in zip(ids, lines):
        words = (t.lower() for t in tokens)
        result[key].append(" ".join(w for w in words if w not in PUNCTUATIONS))
    return result
