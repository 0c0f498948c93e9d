"""The seed's word pools: about 10 prefixes, 70 artists, 20 films and 20 suffixes.

They are the built-in defaults; the shipped config.toml carries the same lists so the owner can edit them.
"""

PREFIXES = (
    "A painting",
    "A sketch",
    "A photograph",
    "A portrait",
    "A watercolour",
    "An oil painting",
    "A charcoal drawing",
    "A digital illustration",
    "A pencil drawing",
    "A comic book panel",
)

ARTISTS = (
    "Andy Warhol", "Vincent van Gogh", "Claude Monet", "Pablo Picasso", "Salvador Dali",
    "Rembrandt", "Johannes Vermeer", "Leonardo da Vinci", "Michelangelo", "Gustav Klimt",
    "Edvard Munch", "Frida Kahlo", "Georgia O'Keeffe", "Henri Matisse", "Paul Cezanne",
    "Edward Hopper", "Roy Lichtenstein", "Jean-Michel Basquiat", "Keith Haring", "Banksy",
    "Hokusai", "Alphonse Mucha", "Egon Schiele", "Amedeo Modigliani", "Rene Magritte",
    "Caravaggio", "Diego Velazquez", "Francisco Goya", "J. M. W. Turner", "John Singer Sargent",
    "Norman Rockwell", "Greg Rutkowski", "Artgerm", "Alphonse Legros", "Wassily Kandinsky",
    "Piet Mondrian", "Joan Miro", "Marc Chagall", "Paul Gauguin", "Pierre-Auguste Renoir",
    "Edgar Degas", "Georges Seurat", "Henri de Toulouse-Lautrec", "Tamara de Lempicka", "Zdzislaw Beksinski",
    "H. R. Giger", "Moebius", "Hayao Miyazaki", "Studio Ghibli", "Tim Burton",
    "Yoshitaka Amano", "Mark Rothko", "Jackson Pollock", "David Hockney", "Lucian Freud",
    "Francis Bacon", "Caspar David Friedrich", "William Blake", "Sandro Botticelli", "Titian",
    "Raphael", "Albrecht Durer", "Hieronymus Bosch", "Peter Paul Rubens", "Jan van Eyck",
    "Kehinde Wiley", "Yayoi Kusama", "Takashi Murakami", "Ansel Adams", "Annie Leibovitz",
)

FILMS = (
    "The Matrix", "Blade Runner", "Star Wars", "The Lord of the Rings", "Spirited Away",
    "The Grand Budapest Hotel", "Mad Max: Fury Road", "Pulp Fiction", "Amelie", "Akira",
    "Tron: Legacy", "Dune", "The Godfather", "Inception", "Pan's Labyrinth",
    "2001: A Space Odyssey", "Ghost in the Shell", "Jurassic Park", "The Shining", "Interstellar",
)

SUFFIXES = (
    "bokeh", "8K", "trending on Artstation", "highly detailed", "sharp focus",
    "studio lighting", "dramatic lighting", "volumetric light", "cinematic", "award winning",
    "masterpiece", "intricate", "vibrant colours", "soft light", "octane render",
    "unreal engine", "depth of field", "golden hour", "symmetrical", "4K",
)
