/**
 * A reader for the YAML that deploy/kubernetes uses, for tests only (no YAML parser is a
 * dependency): documents split by `---`, block mappings and sequences indented with spaces,
 * plain, quoted and JSON flow (`["ALL"]`) scalars, `#` comments. Anything else (block scalars,
 * anchors, tags, tabs, octal-looking numbers) throws, so a manifest cannot silently mean
 * something else here than in kubectl.
 */
export function parseYamlDocuments(text: string): unknown[] {
  const docs: Line[][] = [[]];
  text.split('\n').forEach((raw, index) => {
    if (raw.includes('\t')) throw new Error(`line ${index + 1}: tabs are not supported`);
    const content = stripComment(raw).trimEnd();
    if (content.trim() === '') return;
    if (content === '---') {
      docs.push([]);
      return;
    }
    docs.at(-1)!.push({ indent: content.length - content.trimStart().length, text: content.trim(), n: index + 1 });
  });
  return docs
    .filter((lines) => lines.length > 0)
    .map((lines) => {
      const cursor = { i: 0 };
      const value = parseBlock(lines, cursor, lines[0]!.indent);
      if (cursor.i < lines.length) throw new Error(`line ${lines[cursor.i]!.n}: unexpected indentation`);
      return value;
    });
}

interface Line {
  readonly indent: number;
  readonly text: string;
  readonly n: number;
}

/** The line without a `#` comment (one that starts the line or follows a space, outside quotes). */
function stripComment(line: string): string {
  let quote: string | null = null;
  for (let i = 0; i < line.length; i++) {
    const c = line[i]!;
    if (quote) {
      if (c === quote) quote = null;
    } else if (c === '"' || c === "'") {
      quote = c;
    } else if (c === '#' && (i === 0 || line[i - 1] === ' ')) {
      return line.slice(0, i);
    }
  }
  return line;
}

const isItem = (line: Line): boolean => line.text === '-' || line.text.startsWith('- ');

function parseBlock(lines: Line[], cursor: { i: number }, indent: number): unknown {
  return isItem(lines[cursor.i]!) ? parseSequence(lines, cursor, indent) : parseMapping(lines, cursor, indent);
}

function parseMapping(lines: Line[], cursor: { i: number }, indent: number): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  while (cursor.i < lines.length) {
    const line = lines[cursor.i]!;
    if (line.indent < indent || (line.indent === indent && isItem(line))) break;
    if (line.indent > indent) throw new Error(`line ${line.n}: unexpected indentation`);
    const match = /^([A-Za-z0-9_./-]+):(?: +(.*))?$/.exec(line.text);
    if (!match) throw new Error(`line ${line.n}: expected "key: value", got ${JSON.stringify(line.text)}`);
    const key = match[1]!;
    if (key in out) throw new Error(`line ${line.n}: duplicate key ${key}`);
    cursor.i++;
    const next = lines[cursor.i];
    if (match[2] !== undefined) out[key] = scalar(match[2], line.n);
    else if (next && (next.indent > indent || (next.indent === indent && isItem(next)))) out[key] = parseBlock(lines, cursor, next.indent);
    else out[key] = null;
  }
  return out;
}

function parseSequence(lines: Line[], cursor: { i: number }, indent: number): unknown[] {
  const out: unknown[] = [];
  while (cursor.i < lines.length) {
    const line = lines[cursor.i]!;
    if (line.indent !== indent || !isItem(line)) {
      if (line.indent > indent) throw new Error(`line ${line.n}: unexpected indentation`);
      break;
    }
    const item = line.text.slice(1).trimStart();
    if (item === '') {
      cursor.i++;
      const next = lines[cursor.i];
      out.push(next && next.indent > indent ? parseBlock(lines, cursor, next.indent) : null);
    } else if (/^[A-Za-z0-9_./-]+:( |$)/.test(item)) {
      // "- key: value": a mapping whose first key sits two columns right of the dash
      const offset = line.text.length - item.length;
      lines[cursor.i] = { indent: indent + offset, text: item, n: line.n };
      out.push(parseMapping(lines, cursor, indent + offset));
    } else {
      out.push(scalar(item, line.n));
      cursor.i++;
    }
  }
  return out;
}

function scalar(raw: string, n: number): unknown {
  const text = raw.trim();
  if (/^[|>&*!%@`]/.test(text)) throw new Error(`line ${n}: ${JSON.stringify(text)}: block scalars, anchors and tags are not supported`);
  if (text.startsWith('"') || text.startsWith('[') || text.startsWith('{')) {
    try {
      return JSON.parse(text) as unknown;
    } catch {
      throw new Error(`line ${n}: ${JSON.stringify(text)}: quoted strings and flow collections must be JSON`);
    }
  }
  if (text.startsWith("'")) {
    if (!text.endsWith("'") || text.length < 2) throw new Error(`line ${n}: unterminated ${text}`);
    return text.slice(1, -1).replaceAll("''", "'");
  }
  if (text === 'true' || text === 'false') return text === 'true';
  if (text === 'null' || text === '~') return null;
  if (/^0\d/.test(text)) throw new Error(`line ${n}: ${text}: quote it, or write it in decimal (YAML reads it as octal or a string depending on the version)`);
  if (/^-?\d+(\.\d+)?$/.test(text)) return Number(text);
  if (/: |^- /.test(text)) throw new Error(`line ${n}: ${JSON.stringify(text)}: quote a string that looks like a mapping or an item`);
  return text;
}
