"""Model families: one flat class per shipped architecture, each behind the same seam.

`codec.zoo.ARCHITECTURES` maps an architecture name to its class; `codec.api` and the CLI look a
model up there and never branch on its family. Every class offers:

    family, arch, stride            # "hp" / "vq"; its architecture name; image sides padded to a multiple
    continuous_quality              # True: every quality 0..100 is a rate; False: qualities pick points
    qualities() -> [float]          # the qualities of its trained operating points (what a sweep measures)
    operating_point(quality, codebook, depth) -> (quality, codebook, depth)   # the header's rate fields
    forward(...)                    # training: reconstructions and likelihoods
    prepare(x) -> features          # the rate-free part of compress, computed once for a rate search
    compress(x, features, header, refine, searcher, roi) -> [Packet]
    decompress(packets, header, conceal) -> x_hat (1, 3, H, W), padded to the stride; it is
    reconstruct(*decode(packets, header, conceal)): the integer symbols (and a region of interest's
    map; vq: the expected codes of restored indices), then the float synthesis; decode_latents(...)
    is decode's symbols alone
    layout(header) -> [(kind, first, count)]   # the packets a file holds after any ROI packet

Inside, a model turns latents into integer symbols and hands plain arrays (symbols, CDF-table
indexes or CDF rows) to `codec.entropy` and the range coder, which know nothing of networks.
"""
