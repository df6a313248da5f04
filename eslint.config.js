// @ts-check
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/', 'bench-dist/', 'coverage/', '.cache/', 'bench/results/'] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      '@typescript-eslint/no-explicit-any': 'error',
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/consistent-type-imports': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_' }],
      'no-console': 'error',
    },
  },
  {
    files: ['**/*.js', '**/*.mjs'],
    ...tseslint.configs.disableTypeChecked,
  },
  {
    // the web view's script runs in a browser: its globals, listed (no dependency for a list of names)
    files: ['ui/**/*.js'],
    languageOptions: {
      sourceType: 'module',
      globals: Object.fromEntries(
        ['AbortController', 'Node', 'URL', 'URLSearchParams', 'TextDecoderStream', 'clearInterval', 'clearTimeout', 'confirm', 'document', 'fetch', 'location', 'performance', 'sessionStorage', 'setInterval', 'setTimeout'].map(
          (name) => [name, 'readonly'],
        ),
      ),
    },
  },
);
